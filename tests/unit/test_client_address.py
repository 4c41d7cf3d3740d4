"""Where a connection comes from and whether its Origin may use us (gateway/client_address.py):
X-Forwarded-For believed only from a trusted proxy, and only its last header line's last entry;
origin_allowed for no Origin, the gateway's own origin (default ports, http and https, IPv6
literals), listed origins, "*", and "null" or garbage."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from switchboard.gateway.client_address import client_address, origin_allowed

PROXIES = ("127.0.0.1/32", "10.0.0.0/8", "::1/128")


def scope(peer: str | None) -> dict:
    return {"client": (peer, 51234) if peer is not None else None}


def xff(*lines: str) -> Headers:
    return Headers(raw=[(b"host", b"chat.example.com"), *((b"x-forwarded-for", line.encode()) for line in lines)])


# ---- client_address -----------------------------------------------------------------------------

def test_a_trusted_proxys_forwarded_address_is_believed():
    assert client_address(scope("127.0.0.1"), xff("203.0.113.7"), PROXIES) == "203.0.113.7"
    assert client_address(scope("10.1.2.3"), xff("203.0.113.7"), PROXIES) == "203.0.113.7"
    assert client_address(scope("::1"), xff("2001:db8::7"), PROXIES) == "2001:db8::7"


def test_only_the_last_entry_of_the_header_is_believed():
    headers = xff("198.51.100.1, 192.0.2.9,203.0.113.7")  # the client's made-up entries, then HAProxy's
    assert client_address(scope("127.0.0.1"), headers, PROXIES) == "203.0.113.7"


def test_a_client_sent_header_line_before_haproxys_is_ignored():
    headers = xff("198.51.100.1", "203.0.113.7")  # the client's own line, then the one HAProxy added
    assert client_address(scope("127.0.0.1"), headers, PROXIES) == "203.0.113.7"
    headers = xff("198.51.100.1, 198.51.100.2", "192.0.2.1, 203.0.113.7")
    assert client_address(scope("127.0.0.1"), headers, PROXIES) == "203.0.113.7"


def test_an_untrusted_peer_keeps_its_own_address_whatever_it_forwards():
    assert client_address(scope("198.51.100.50"), xff("203.0.113.7"), PROXIES) == "198.51.100.50"
    assert client_address(scope("11.0.0.1"), xff("10.0.0.1"), PROXIES) == "11.0.0.1"  # just outside 10/8
    assert client_address(scope("2001:db8::50"), xff("203.0.113.7"), PROXIES) == "2001:db8::50"


def test_a_trusted_peer_without_the_header_is_itself():
    assert client_address(scope("127.0.0.1"), Headers(raw=[]), PROXIES) == "127.0.0.1"


def test_an_empty_last_entry_falls_back_to_the_peer():
    assert client_address(scope("127.0.0.1"), xff("203.0.113.7, "), PROXIES) == "127.0.0.1"


def test_no_proxies_trusted_means_the_header_is_never_believed():
    assert client_address(scope("127.0.0.1"), xff("203.0.113.7"), ()) == "127.0.0.1"


def test_a_peer_that_is_not_an_ip_address_is_never_trusted():
    assert client_address(scope("testclient"), xff("203.0.113.7"), PROXIES) == "testclient"


def test_no_peer_at_all_is_unknown():
    assert client_address(scope(None), Headers(raw=[]), PROXIES) == "unknown"


def test_a_plain_mapping_of_headers_works_too():
    assert client_address(scope("127.0.0.1"), {"x-forwarded-for": "1.2.3.4, 203.0.113.7"}, PROXIES) == "203.0.113.7"
    assert client_address(scope("127.0.0.1"), {}, PROXIES) == "127.0.0.1"


# ---- origin_allowed -----------------------------------------------------------------------------

def test_no_origin_is_allowed():
    assert origin_allowed(None, "chat.example.com", ())
    assert origin_allowed(None, None, ())


@pytest.mark.parametrize("origin, host", [
    ("http://chat.example.com", "chat.example.com"),
    ("https://chat.example.com", "chat.example.com"),
    ("http://chat.example.com", "chat.example.com:80"),
    ("https://chat.example.com", "chat.example.com:443"),
    ("http://chat.example.com:80", "chat.example.com"),
    ("https://chat.example.com:443", "chat.example.com"),
    ("http://localhost:8000", "localhost:8000"),
    ("HTTP://Chat.Example.COM", "CHAT.example.com"),
    ("http://127.0.0.1:8000", "127.0.0.1:8000"),
])
def test_the_gateways_own_origin_is_allowed(origin, host):
    assert origin_allowed(origin, host, ())


@pytest.mark.parametrize("origin, host", [
    ("http://[::1]:8000", "[::1]:8000"),
    ("http://[::1]", "[::1]"),
    ("http://[::1]", "[::1]:80"),
    ("https://[2001:db8::1]:443", "[2001:db8::1]"),
    ("http://[2001:DB8::1]:8000", "[2001:db8::1]:8000"),
])
def test_ipv6_literal_hosts_match_their_own_origin(origin, host):
    assert origin_allowed(origin, host, ())


@pytest.mark.parametrize("origin, host", [
    ("http://evil.example.net", "chat.example.com"),
    ("http://chat.example.com:8001", "chat.example.com:8000"),
    ("http://chat.example.com", "chat.example.com:8000"),
    ("http://chat.example.com.evil.net", "chat.example.com"),
    ("http://[::2]:8000", "[::1]:8000"),
    ("http://chat.example.com", None),
])
def test_other_origins_are_refused(origin, host):
    assert not origin_allowed(origin, host, ())


def test_listed_origins_are_allowed_and_normalized():
    allowed = ("https://app.example.org", "http://localhost:5173", "HTTPS://Other.Example.org:443")
    assert origin_allowed("https://app.example.org", "chat.example.com", allowed)
    assert origin_allowed("https://app.example.org:443", "chat.example.com", allowed)
    assert origin_allowed("http://localhost:5173", "chat.example.com", allowed)
    assert origin_allowed("https://other.example.org", "chat.example.com", allowed)
    assert not origin_allowed("http://app.example.org", "chat.example.com", allowed)  # another scheme
    assert not origin_allowed("http://localhost:5174", "chat.example.com", allowed)


def test_a_star_allows_every_origin():
    assert origin_allowed("https://anything.example", "chat.example.com", ("*",))
    assert origin_allowed("null", "chat.example.com", ("*",))


@pytest.mark.parametrize("origin", [
    "null", "", "garbage", "ftp://chat.example.com", "file://", "http://", "http://chat.example.com:notaport",
    "http://[::1", "chat.example.com", "javascript:alert(1)",
])
def test_null_and_garbage_origins_are_refused(origin):
    assert not origin_allowed(origin, "chat.example.com", ("https://app.example.org",))
    assert not origin_allowed(origin, origin, ())


@pytest.mark.parametrize("origin, host", [
    ("http://chat.example.com:443", "chat.example.com:443"),
    ("https://chat.example.com:80", "chat.example.com:80"),
])
def test_the_gateways_own_origin_on_the_other_schemes_default_port_is_allowed(origin, host):
    assert origin_allowed(origin, host, ())
