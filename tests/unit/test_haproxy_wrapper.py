"""`switchboard-haproxy` (switchboard/haproxy_wrapper.py): rewrite() of a config shaped like the one
Ray Serve renders from ray/serve/_private/haproxy_templates.py (global, defaults, `frontend
prometheus` on `bind :9101`, `frontend http_frontend` on `bind <host>:8000`, backends, `listen
stats` on `bind *:8404`) adds `option forwardfor` to the client frontend once, moves only the
stats and metrics wildcard binds, and is idempotent; main() rewrites the -f file in place and execs
the real HAProxy with the same arguments (both faked)."""

from __future__ import annotations

import pytest

from switchboard import haproxy_wrapper
from switchboard.haproxy_wrapper import FORWARDFOR, private_ports, rewrite

PRIVATE = {"8404", "9101"}


def serve_config(frontend_bind: str = "127.0.0.1:8000") -> str:
    """A config as Serve's HAPROXY_CONFIG_TEMPLATE renders it (one app, metrics off)."""
    return f"""global
    log /tmp/ray/haproxy.log local0 info
    stats socket /tmp/ray/haproxy.sock mode 666 level admin expose-fd listeners
    stats timeout 30s
    maxconn 20000
    nbthread 4
    tune.bufsize 16384
defaults
    mode http
    option log-health-checks
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    log global
    option httplog
    option abortonclose
    option splice-request
    option splice-response
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    option http-no-delay
    balance leastconn
frontend prometheus
    bind :9101
    mode http
    http-request use-service prometheus-exporter if {{ path /metrics }}
    no log
frontend http_frontend
    bind {frontend_bind}
    # Health check endpoint
    acl healthcheck path -i /-/healthz
    http-request set-log-level debug if healthcheck
    http-request return status 200 content-type text/plain string "success" if healthcheck
    # Routes endpoint
    acl routes path -i /-/routes
    http-request set-log-level debug if routes
    http-request return status 200 content-type application/json string "{{}}" if routes
    acl is_switchboard path_beg /
    acl is_switchboard path /
    use_backend switchboard if is_switchboard
    default_backend default_backend
backend default_backend
    http-request return status 404 content-type text/plain lf-string "Path '%[path]' not found."
backend switchboard
    log global
    http-reuse always
    timeout tunnel 3600s
    option httpchk GET /-/healthz
    http-check expect status 200
    default-server inter 5s fall 3 rise 2
    server replica_1 10.0.0.5:30001 check
    server replica_2 10.0.0.6:30001 check
listen stats
  bind *:8404
  stats enable
  stats uri /stats
  stats refresh 1s
"""


def line_after(config: str, line: str) -> str:
    lines = config.splitlines()
    return lines[lines.index(line) + 1]


# ---- rewrite ------------------------------------------------------------------------------------

@pytest.mark.parametrize("frontend_bind", ["127.0.0.1:8000", "*:8000", "0.0.0.0:8000", ":8000"])
def test_forwardfor_goes_right_after_the_client_frontends_bind_exactly_once(frontend_bind):
    rewritten = rewrite(serve_config(frontend_bind), None, PRIVATE)
    assert line_after(rewritten, f"    bind {frontend_bind}") == FORWARDFOR
    assert rewritten.splitlines().count(FORWARDFOR) == 1
    assert line_after(rewritten, "frontend http_frontend") == f"    bind {frontend_bind}"  # the bind itself untouched


def test_without_bind_only_the_forwardfor_line_changes():
    config = serve_config("*:8000")
    rewritten = rewrite(config, None, PRIVATE)
    lines = rewritten.splitlines()
    lines.remove(FORWARDFOR)
    assert lines == config.splitlines()
    assert rewritten.endswith("\n")


def test_with_bind_the_stats_and_metrics_wildcards_move_and_nothing_else():
    config = serve_config("*:8000")
    rewritten = rewrite(config, "127.0.0.1", PRIVATE)
    assert line_after(rewritten, "frontend prometheus") == "    bind 127.0.0.1:9101"
    assert line_after(rewritten, "listen stats") == "  bind 127.0.0.1:8404"
    assert line_after(rewritten, "frontend http_frontend") == "    bind *:8000"  # the clients' bind stays
    without_forwardfor = [line for line in rewritten.splitlines() if line != FORWARDFOR]
    assert [(old, new) for old, new in zip(config.splitlines(), without_forwardfor) if old != new] == [
        ("    bind :9101", "    bind 127.0.0.1:9101"), ("  bind *:8404", "  bind 127.0.0.1:8404")]


def test_the_client_frontend_is_never_moved_even_on_a_wildcard():
    rewritten = rewrite(serve_config("*:8000"), "10.0.0.9", PRIVATE)
    assert "    bind *:8000" in rewritten.splitlines()
    assert "10.0.0.9:8000" not in rewritten


def test_a_second_rewrite_changes_nothing():
    for bind in (None, "127.0.0.1"):
        once = rewrite(serve_config("*:8000"), bind, PRIVATE)
        assert rewrite(once, bind, PRIVATE) == once


def test_the_ports_moved_are_the_ones_named():
    rewritten = rewrite(serve_config(), "127.0.0.1", {"8404"})
    assert "    bind :9101" in rewritten.splitlines()
    assert "  bind 127.0.0.1:8404" in rewritten.splitlines()


def test_private_ports_follow_serves_environment():
    assert private_ports({}) == {"8404", "9101"}
    assert private_ports({"RAY_SERVE_HAPROXY_STATS_PORT": "9000", "RAY_SERVE_HAPROXY_METRICS_PORT": "9001"}) == {
        "9000", "9001"}


def test_a_config_without_a_trailing_newline_keeps_none():
    config = serve_config().rstrip("\n")
    assert not rewrite(config, None, PRIVATE).endswith("\n")


# ---- main ---------------------------------------------------------------------------------------

class Exec(Exception):
    """Raised by the fake os.execv: exec never returns."""


@pytest.fixture
def fake_exec(monkeypatch):
    execs = []

    def execv(path, args):
        execs.append((path, list(args)))
        raise Exec()

    monkeypatch.setattr(haproxy_wrapper, "real_haproxy", lambda: "/opt/ray/haproxy")
    monkeypatch.setattr(haproxy_wrapper.os, "execv", execv)
    return execs


def test_main_rewrites_the_config_in_place_and_execs_the_real_haproxy(tmp_path, monkeypatch, fake_exec):
    monkeypatch.setenv("SWITCHBOARD_HAPROXY_BIND", "127.0.0.1")
    monkeypatch.delenv("RAY_SERVE_HAPROXY_STATS_PORT", raising=False)
    monkeypatch.delenv("RAY_SERVE_HAPROXY_METRICS_PORT", raising=False)
    path = tmp_path / "haproxy.cfg"
    path.write_text(serve_config("*:8000"))
    argv = ["-f", str(path), "-p", str(tmp_path / "haproxy.pid"), "-db"]
    with pytest.raises(Exec):
        haproxy_wrapper.main(argv)
    assert path.read_text() == rewrite(serve_config("*:8000"), "127.0.0.1", PRIVATE)
    assert fake_exec == [("/opt/ray/haproxy", ["/opt/ray/haproxy", *argv])]


def test_main_without_the_bind_setting_only_adds_forwardfor(tmp_path, monkeypatch, fake_exec):
    monkeypatch.delenv("SWITCHBOARD_HAPROXY_BIND", raising=False)
    path = tmp_path / "haproxy.cfg"
    path.write_text(serve_config())
    with pytest.raises(Exec):
        haproxy_wrapper.main(["-f", str(path)])
    assert path.read_text() == rewrite(serve_config(), None, PRIVATE)
    assert "    bind :9101" in path.read_text().splitlines()


def test_main_without_a_config_file_just_execs(monkeypatch, fake_exec):
    with pytest.raises(Exec):
        haproxy_wrapper.main(["-v"])
    assert fake_exec == [("/opt/ray/haproxy", ["/opt/ray/haproxy", "-v"])]


def test_single_ports_come_from_below_the_ephemeral_range_and_are_free():
    """A port from bind(0) is in the range every Ray process binds port 0 in; the chaos run's
    HAProxy once found such a port taken between the pick and its bind."""
    import socket

    from switchboard.private_ports import SINGLE_PORTS_FROM, SINGLE_PORTS_TO, free_port

    ports = {free_port() for _ in range(20)}
    assert all(SINGLE_PORTS_FROM <= port < SINGLE_PORTS_TO < 32_768 for port in ports)
    assert len(ports) > 1  # picked at random, not one fixed port
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free indeed
