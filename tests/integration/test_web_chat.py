"""The web chat page (gateway/static/, served at `/`) in a real headless browser: Debian's chromium
driven through chromedriver by Selenium, against the shared real platform (Ray, PostgreSQL, Serve).

Two browser users chat both ways, see each other type and read; one goes offline (the browser's
network is cut through the DevTools protocol, as a lost Wi-Fi would) while the other writes, comes
back, and every message shows exactly once and in order, on both pages, as the server stored it.

The shared platform runs with dev mode off, so users sign in the way a production page would: by
pasting a token (minted here with the platform's secret).

SWITCHBOARD_WEB_SCREENSHOT=docs/web-chat.png also saves the README's screenshot of the two pages
side by side (users "alice" and "bob") from test_two_users_chat_live_with_typing_and_read_receipts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from helpers import unique_user
from switchboard.auth import mint_token

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Flags that keep a headless chromium to itself: no GPU, no sandbox (we run as root), and none of
# its background connections (update checks, sync), which a closed network refuses noisily.
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=900,620",
)
# Bounds on waiting for the page to show something (normally well under a second); not sleeps.
WAIT_S = 20.0
POLL_S = 0.05
SCREENSHOT_ENV = "SWITCHBOARD_WEB_SCREENSHOT"


def require_browser() -> None:
    """The test needs the browser: missing, it fails (a skipped browser test would pass CI)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"the web page test needs Debian's chromium and chromium-driver; missing: {', '.join(missing)}. "
            "Run scripts/setup as root (it installs them with apt-get), or: apt-get install chromium chromium-driver",
            pytrace=False,
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail("selenium is not installed: run scripts/setup (it is in the project's test extra)", pytrace=False)


def wait_for(read: Callable[[], object], check: Callable[[object], bool], what: str, timeout: float = WAIT_S):
    """Poll `read()` until `check` accepts its value; return that value, or fail naming the last one."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}; last seen: {value!r}")
        time.sleep(POLL_S)


class ChatPage:
    """One browser showing the chat page, driven the way a person would use it."""

    def __init__(self, driver, base_url: str, name: str):
        self.driver = driver
        self.name = name
        driver.get(base_url + "/")

    def gateway(self) -> str:
        """The base URL of the gateway the page is using now (gateways.js)."""
        return self.driver.execute_script("return window.switchboard.gateways.base;")

    # ---- actions ----------------------------------------------------------------------------

    def paste_token(self, token: str) -> None:
        self._field("token-input").send_keys(token)
        self._click("#token-form button")

    def sign_in_with_token(self, token: str, user_id: str) -> None:
        self.paste_token(token)
        wait_for(self.connection_state, lambda s: s == "connected", f"{self.name} to connect")
        wait_for(lambda: self._text("me"), lambda t: t == f"Signed in as {user_id}", f"{self.name}'s user id")

    def dev_sign_in(self, user_id: str) -> None:
        self._field("dev-user").send_keys(user_id)
        self._click("#dev-form button")

    def create_conversation(self, members: list[str], title: str) -> None:
        self._field("new-members").send_keys(", ".join(members))
        self._field("new-title").send_keys(title)
        self._click("#new-conversation button")
        wait_for(lambda: self._text("conversation-title"), lambda t: t == title, f"{self.name} to open {title!r}")

    def open_conversation(self, title: str) -> None:
        wait_for(self.conversation_titles, lambda titles: any(title in t for t in titles),
                 f"{title!r} in {self.name}'s list")
        for button in self.driver.find_elements("css selector", "#conversations button"):
            if button.get_attribute("data-id") and title in button.text:
                button.click()
                break
        wait_for(lambda: self._text("conversation-title"), lambda t: t == title, f"{self.name} to open {title!r}")

    def type(self, text: str) -> None:
        self._field("composer-input").send_keys(text)

    def send(self, text: str) -> None:
        self.type(text + "\n")

    def go_offline(self) -> None:
        self._network(offline=True)

    def go_online(self) -> None:
        self._network(offline=False)

    # ---- what the page shows ----------------------------------------------------------------

    def connection_state(self) -> str:
        return self.driver.find_element("id", "status").get_attribute("data-state")

    def banner_shown(self) -> bool:
        return self.driver.find_element("id", "offline-banner").is_displayed()

    def messages(self) -> list[tuple[int, str, str]]:
        """(seq, sender, body) of every committed message shown, top to bottom."""
        rows = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#messages li.message:not(.pending)'))"
            ".map(li => [li.dataset.seq, li.dataset.sender, li.querySelector('.body').textContent]);"
        )
        return [(int(seq), sender, body) for seq, sender, body in rows]

    def pending_bodies(self) -> list[str]:
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#messages li.pending .body')).map(e => e.textContent);"
        )

    def receipts(self) -> dict[int, str]:
        """seq -> the receipt line drawn under that message."""
        rows = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#messages li.message .receipt'))"
            ".map(e => [e.closest('li').dataset.seq, e.textContent]);"
        )
        return {int(seq): text for seq, text in rows}

    def typing_line(self) -> str:
        return self._text("typing")

    def conversation_titles(self) -> list[str]:
        return [b.text for b in self.driver.find_elements("css selector", "#conversations button")]

    def stats(self) -> dict:
        return self.driver.execute_script("return Object.assign({}, window.switchboard.stats);")

    def cursor(self) -> int:
        return self.driver.execute_script("return window.switchboard.state.cursor;")

    def sign_in_error(self) -> str:
        element = self.driver.find_element("id", "sign-in-error")
        return element.text if element.is_displayed() else ""

    def chat_shown(self) -> bool:
        return self.driver.find_element("id", "chat").is_displayed()

    # ---- plumbing ---------------------------------------------------------------------------

    def _field(self, element_id: str):
        return self.driver.find_element("id", element_id)

    def _click(self, selector: str) -> None:
        self.driver.find_element("css selector", selector).click()

    def _text(self, element_id: str) -> str:
        return self.driver.find_element("id", element_id).text

    def _network(self, offline: bool) -> None:
        # Through the DevTools protocol: new connections fail and the page gets the browser's
        # `offline` / `online` events, as with a real network loss.
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1,
        })


@pytest.fixture
def open_page(sb):
    """Factory: a new chromium (own profile) showing the chat page; all are closed after the test."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers, profiles = [], []

    def make(name: str, path: str = "") -> ChatPage:
        """path: a region's entry point (`/regions/eu`) to load the page from, else the root."""
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        profile = tempfile.mkdtemp(prefix="sb-chromium-")
        profiles.append(profile)
        options.add_argument(f"--user-data-dir={profile}")
        # Given a driver path, Selenium never runs Selenium Manager (which would try to download).
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        drivers.append(driver)
        return ChatPage(driver, sb.http_url + path, name)

    yield make
    for driver in drivers:
        driver.quit()
    for profile in profiles:
        shutil.rmtree(profile, ignore_errors=True)


def signed_in(open_page, sb, user_id: str, region: str | None = None, path: str = "") -> ChatPage:
    page = open_page(user_id, path)
    page.sign_in_with_token(mint_token(sb.settings.jwt_secret, user_id, region=region), user_id)
    return page


def stored_messages(sb, user_id: str, conversation_id: str) -> list[tuple[int, str, str]]:
    """The conversation as the server holds it (HTTP history), as (seq, sender, body)."""
    token = mint_token(sb.settings.jwt_secret, user_id)
    response = httpx.get(f"{sb.http_url}/v1/conversations/{conversation_id}/messages",
                         params={"after": 0, "limit": 200}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return [(m["seq"], m["sender"], m["body"]) for m in response.json()["messages"]]


def open_conversation_id(page: ChatPage) -> str:
    return page.driver.execute_script("return window.switchboard.state.openId;")


def start_chat(open_page, sb, alice_id: str, bob_id: str, title: str) -> tuple[ChatPage, ChatPage, str]:
    """Both signed in; alice creates the conversation with bob, who finds it in his list, live."""
    alice, bob = signed_in(open_page, sb, alice_id), signed_in(open_page, sb, bob_id)
    alice.create_conversation([bob_id], title)
    bob.open_conversation(title)
    return alice, bob, open_conversation_id(alice)


def test_two_users_chat_live_with_typing_and_read_receipts(open_page, sb):
    screenshot = os.environ.get(SCREENSHOT_ENV)
    alice_id, bob_id = ("alice", "bob") if screenshot else (unique_user("alice"), unique_user("bob"))
    alice, bob, cid = start_chat(open_page, sb, alice_id, bob_id, "Lunch plans")
    assert open_conversation_id(bob) == cid

    alice.send("Hi Bob! Noon at the usual place?")
    first = [(1, alice_id, "Hi Bob! Noon at the usual place?")]
    wait_for(bob.messages, lambda m: m == first, "alice's message on bob's page")

    bob.type("Sounds good")
    wait_for(alice.typing_line, lambda t: t == f"{bob_id} is typing…", "bob typing, on alice's page")
    # Bob's page shows alice's message, so it marks it read: alice sees it under that message.
    wait_for(alice.receipts, lambda r: r == {1: f"Read by {bob_id}"}, "bob's read receipt on alice's page")

    bob.send(", see you there")
    second = first + [(2, bob_id, "Sounds good, see you there")]
    wait_for(alice.messages, lambda m: m == second, "bob's message on alice's page")
    wait_for(alice.typing_line, lambda t: t == "", "his message to end 'is typing'")
    wait_for(bob.receipts, lambda r: r == {2: f"Read by {alice_id}"}, "alice's read receipt on bob's page")

    alice.send("Great, I'll book a table")
    third = second + [(3, alice_id, "Great, I'll book a table")]
    wait_for(bob.messages, lambda m: m == third, "alice's second message on bob's page")
    # The receipt moves to the newest message bob has read; there is one per reader.
    wait_for(alice.receipts, lambda r: r == {3: f"Read by {bob_id}"}, "bob's receipt moving to seq 3")
    wait_for(alice.messages, lambda m: m == third, "alice's own message, committed")

    bob.type("Perfect")
    wait_for(alice.typing_line, lambda t: t == f"{bob_id} is typing…", "bob typing again")
    assert stored_messages(sb, alice_id, cid) == third
    for page in (alice, bob):
        assert page.stats()["repeatedCursors"] == 0
    if screenshot:
        save_side_by_side([alice, bob], Path(screenshot))


def test_offline_user_comes_back_to_every_message_once_and_in_order(open_page, sb):
    alice_id, bob_id = unique_user("alice"), unique_user("bob")
    alice, bob, cid = start_chat(open_page, sb, alice_id, bob_id, "Offline test")
    alice.send("before 1")
    wait_for(bob.messages, lambda m: len(m) == 1, "the first message on bob's page")
    bob.send("before 2")
    before = [(1, alice_id, "before 1"), (2, bob_id, "before 2")]
    wait_for(alice.messages, lambda m: m == before, "bob's reply on alice's page")
    # Alice's receipt for seq 2 reaches bob before he leaves, so his replay holds only messages.
    wait_for(bob.receipts, lambda r: r == {2: f"Read by {alice_id}"}, "alice's receipt on bob's page")
    cursor_before = bob.cursor()
    connects_before = bob.stats()["connects"]

    bob.go_offline()
    wait_for(bob.connection_state, lambda s: s == "disconnected", "bob's page to show disconnected")
    assert bob.banner_shown()
    assert alice.connection_state() == "connected"

    missed = [f"while bob is away {i}" for i in range(5)]
    for body in missed:
        alice.send(body)
    expected_missed = [(3 + i, alice_id, body) for i, body in enumerate(missed)]
    wait_for(alice.messages, lambda m: m == before + expected_missed, "alice's five messages, committed")
    bob.send("written offline")  # queued: it goes out once bob is back
    wait_for(bob.pending_bodies, lambda p: p == ["written offline"], "bob's queued message, pending")
    assert bob.messages() == before  # offline: nothing new arrived
    assert bob.connection_state() == "disconnected"

    bob.go_online()
    wait_for(bob.connection_state, lambda s: s == "connected", "bob's page to reconnect")
    everything = before + expected_missed + [(8, bob_id, "written offline")]
    wait_for(bob.messages, lambda m: m == everything, "every message once, in order, on bob's page")
    wait_for(alice.messages, lambda m: m == everything, "bob's queued message on alice's page")
    assert bob.pending_bodies() == []
    assert not bob.banner_shown()
    assert stored_messages(sb, bob_id, cid) == everything

    # It resumed from its last cursor: the missed five came as the mailbox's replay (not over
    # HTTP), and no event was seen twice.
    stats = bob.stats()
    assert stats["connects"] == connects_before + 1, stats
    assert stats["lastSince"] == cursor_before, stats
    assert stats["replayed"] == len(missed), stats
    assert stats["repeatedCursors"] == 0 and stats["resyncs"] == 0, stats
    # Bob has now read alice's messages up to seq 7 (drawn under 7, as his own 8 is newer).
    wait_for(alice.receipts, lambda r: r == {7: f"Read by {bob_id}"}, "bob's receipt after coming back")


def test_the_page_fails_over_to_the_next_regions_gateway_and_resumes(open_page, sb):
    """Bob (home eu) uses eu's entry point; it goes away (its Serve application deleted, as a
    lost region's ingress would): the page moves to the next gateway of its list (local's),
    resumes with `since`, and misses nothing. eu's entry point is deployed again afterwards."""
    from ray import serve
    from switchboard.gateway.app import deploy
    from switchboard.local import wait_healthy

    alice_id, bob_id = unique_user("alice"), unique_user("bob")
    alice = signed_in(open_page, sb, alice_id)
    bob = signed_in(open_page, sb, bob_id, region="eu", path="/regions/eu")
    assert bob.gateway() == f"{sb.http_url}/regions/eu"
    alice.create_conversation([bob_id], "Failover")
    bob.open_conversation("Failover")
    alice.send("before")
    wait_for(bob.messages, lambda m: m == [(1, alice_id, "before")], "the first message on bob's page")
    try:
        serve.delete("switchboard-eu")
        wait_for(bob.gateway, lambda base: base == f"{sb.http_url}/regions/local", "bob's page to move to local's gateway",
                 timeout=60)
        alice.send("while eu is gone")
        bob.send("from the mirror")
        everything = [(1, alice_id, "before"), (2, alice_id, "while eu is gone"), (3, bob_id, "from the mirror")]
        wait_for(bob.messages, lambda m: sorted(m) == everything, "every message on bob's page", timeout=60)
        wait_for(alice.messages, lambda m: sorted(m) == everything, "bob's message on alice's page")
        assert bob.connection_state() == "connected"
        stats = bob.stats()
        assert stats["lastSince"] is not None and stats["lastSince"] >= 1, stats  # resumed, not started over
        assert stats["repeatedCursors"] == 0 and stats["resyncs"] == 0, stats
        assert stored_messages(sb, bob_id, open_conversation_id(bob)) == everything
    finally:
        deploy(sb.settings, sb.database_url)
        wait_healthy(f"{sb.http_url}/regions/eu")


def test_dev_sign_in_is_refused_with_dev_mode_off(open_page, sb):
    response = httpx.post(f"{sb.http_url}/v1/dev/token", json={"user_id": "mallory"})
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "forbidden"

    page = open_page("mallory")
    page.dev_sign_in("mallory")
    wait_for(page.sign_in_error, lambda e: "SWITCHBOARD_DEV_MODE" in e, "the refusal on the page")
    assert not page.chat_shown()


def test_a_refused_token_returns_to_sign_in(open_page, sb):
    page = open_page("forger")
    page.paste_token(mint_token("not-the-platform-secret", "forger"))
    wait_for(page.sign_in_error, lambda e: "refused your token" in e, "the page to say the token was refused")
    assert not page.chat_shown()
    assert page.connection_state() == "signed-out"


def save_side_by_side(pages: list[ChatPage], path: Path) -> None:
    """The README's screenshot: each page as its user sees it, side by side."""
    folder = Path(tempfile.mkdtemp(prefix="sb-shot-"))
    figures = []
    for index, page in enumerate(pages):
        (folder / f"{index}.png").write_bytes(page.driver.get_screenshot_as_png())
        figures.append(f'<figure><img src="{index}.png"><figcaption>{page.name}</figcaption></figure>')
    (folder / "both.html").write_text(
        "<!doctype html><style>body{margin:0;display:flex;gap:12px;padding:12px;background:#c9cedb;"
        "font:14px system-ui,sans-serif}figure{margin:0}img{display:block;border-radius:6px;"
        "box-shadow:0 1px 4px #0003}figcaption{text-align:center;padding-top:6px;color:#333}</style>"
        + "".join(figures)
    )
    driver = pages[0].driver
    driver.set_window_size(2 * 900 + 36, 620 + 60)
    driver.get((folder / "both.html").as_uri())
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    shutil.rmtree(folder, ignore_errors=True)
