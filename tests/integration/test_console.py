"""The live console (``GET /console``) in headless Chromium against a real instance: follow a
channel, publish through the page's form and from Python, list channels, resume after a reload,
tokens (401 detail, a narrow token's ``forbidden``), and presence with a Python client."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import jwt
import pytest
import redis
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from app.client import Relay
from tests.conftest import RelayFactory
from tests.integration.browsers import chromium, console_log
from tests.support import Instance, stream_ids, timeout

pytestmark = [pytest.mark.redis, pytest.mark.processes, pytest.mark.browser]

SECRET = "a-console-test-secret-long-enough-for-hs256-and-then-some-more-bytes"
SECURED = {"jwt_secret": SECRET, "jwt_audience": "relay-tests", "jwt_issuer": "tests"}
CHANNEL = "C"


def token(**claims: Any) -> str:
    body = {"exp": time.time() + 300, "aud": "relay-tests", "iss": "tests", **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module (each test opens the console of its own instance: another
    origin, so another sessionStorage)."""
    with chromium() as chrome:
        chrome.set_window_size(1280, 1000)
        yield chrome


def wait_for(browser: Any, check: Callable[[], Any], what: str, within: float = 10) -> Any:
    """The first truthy value of ``check`` (polled), or a failure naming ``what`` and the page's log."""
    try:
        return WebDriverWait(browser, timeout(within), poll_frequency=0.05).until(lambda _: check())
    except WebDriverException as exc:
        raise AssertionError(f"timed out waiting for {what}\n{console_log(browser)}") from exc


def text_of(browser: Any, element_id: str) -> str:
    return str(browser.find_element(By.ID, element_id).text)


def fill(browser: Any, element_id: str, value: str) -> None:
    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def open_console(browser: Any, instance: Instance, *, connected: bool = True) -> None:
    browser.get(f"{instance.http}/console")
    if connected:
        wait_for(browser, lambda: state(browser) == "connected" and client_id(browser), "connected")


def state(browser: Any) -> str:
    return str(browser.find_element(By.ID, "state").get_attribute("data-state"))


def client_id(browser: Any) -> str | None:
    value = browser.find_element(By.ID, "client-id").get_attribute("data-client")
    return str(value) if value else None


def use_token(browser: Any, value: str) -> None:
    fill(browser, "token", value)
    browser.find_element(By.ID, "token-apply").click()


def follow(browser: Any, channel: str, from_: str) -> None:
    fill(browser, "follow-channel", channel)
    Select(browser.find_element(By.ID, "follow-from")).select_by_value(from_)
    browser.find_element(By.ID, "follow-submit").click()
    wait_for(browser, lambda: channel_status(browser, channel) == "live", f"{channel} followed")


def channel_status(browser: Any, channel: str) -> str | None:
    found: Any = browser.execute_script(
        "const s = document.querySelector(`[data-testid='channel-${arguments[0]}']`);"
        "return s && s.querySelector('[data-testid=channel-status]').textContent;",
        channel,
    )
    return None if found is None else str(found)


def shown(browser: Any, channel: str) -> list[tuple[str, Any]]:
    """The (id, data) of every message in the channel's list, oldest first."""
    rows: Any = browser.execute_script(
        "const s = document.querySelector(`[data-testid='channel-${arguments[0]}']`);"
        "if (!s) return [];"
        "return [...s.querySelectorAll('[data-testid=message]')].map("
        "  (li) => [li.dataset.id, li.querySelector('.data').textContent]);",
        channel,
    )
    return [(str(entry_id), json.loads(data)) for entry_id, data in rows]


def present(browser: Any, channel: str) -> set[str]:
    """The client ids in the channel's presence list."""
    ids: Any = browser.execute_script(
        "const s = document.querySelector(`[data-testid='channel-${arguments[0]}']`);"
        "if (!s) return [];"
        "return [...s.querySelectorAll('[data-testid=present]')].map((li) => li.dataset.client);",
        channel,
    )
    return {str(i) for i in ids}


def publish_form(browser: Any, channel: str, text: str) -> dict[str, str]:
    """Publish through the page's form; the result's data attributes (status, id or code)."""
    fill(browser, "publish-channel", channel)
    fill(browser, "publish-data", text)
    browser.find_element(By.ID, "publish-submit").click()

    def result() -> dict[str, str] | None:
        out = browser.find_element(By.ID, "publish-result")
        status = out.get_attribute("data-status")
        if status in (None, "", "pending"):
            return None
        return {
            "status": str(status),
            "id": str(out.get_attribute("data-id") or ""),
            "code": str(out.get_attribute("data-code") or ""),
            "text": str(out.text),
        }

    found: dict[str, str] = wait_for(browser, result, f"the publish to {channel} answered")
    return found


def listed(browser: Any) -> dict[str, tuple[str, str]]:
    """The channel list: name -> (length, last id)."""
    rows: Any = browser.execute_script(
        "return [...document.querySelectorAll('[data-testid=channel-row]')].map((tr) => ["
        "  tr.dataset.channel, tr.querySelector('.length').textContent,"
        "  tr.querySelector('.last-id').textContent]);"
    )
    return {str(name): (str(length), str(last)) for name, length, last in rows}


def test_follow_publish_list_and_resume_after_a_reload(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str, tmp_path: Path, browser: Any
) -> None:
    instance = relay().start()
    open_console(browser, instance)
    follow(browser, CHANNEL, "0")

    published = publish_form(browser, CHANNEL, '{"hello": "console"}')
    assert published["status"] == "ok", published
    first = published["id"]
    wait_for(browser, lambda: shown(browser, CHANNEL) == [(first, {"hello": "console"})], "the message")

    response = httpx.post(f"{instance.http}/channels/{CHANNEL}/messages", json={"from": "python"})
    assert response.status_code == 201, response.text
    second = response.json()["id"]
    wait_for(browser, lambda: len(shown(browser, CHANNEL)) == 2, "the message published from Python")
    assert shown(browser, CHANNEL) == [(first, {"hello": "console"}), (second, {"from": "python"})]
    assert stream_ids(redis_client, f"{prefix}:{{{CHANNEL}}}") == [first, second]

    refused = publish_form(browser, CHANNEL, '{"not": json}')
    assert (refused["status"], refused["code"]) == ("bad", "invalid_json"), refused
    assert "invalid JSON" in refused["text"]
    assert stream_ids(redis_client, f"{prefix}:{{{CHANNEL}}}") == [first, second]

    browser.find_element(By.ID, "channels-refresh").click()
    wait_for(browser, lambda: listed(browser).get(CHANNEL) == ("2", second), "C in the channel list")

    # an untrusted message is text, never markup
    evil = {"html": "<img src=x onerror=\"document.body.dataset.owned='yes'\">"}
    httpx.post(f"{instance.http}/channels/{CHANNEL}/messages", json=evil).raise_for_status()
    wait_for(browser, lambda: len(shown(browser, CHANNEL)) == 3, "the third message")
    assert shown(browser, CHANNEL)[2][1] == evil
    assert browser.execute_script("return document.body.dataset.owned ?? null") is None
    assert browser.find_elements(By.CSS_SELECTOR, "[data-testid=messages] img") == []

    browser.save_screenshot(str(tmp_path / "console.png"))
    png = (tmp_path / "console.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 10_000, len(png)
    shutil.copyfile(tmp_path / "console.png", "/tmp/console.png")

    # a reload follows C again from its position in sessionStorage: nothing shown twice
    third = stream_ids(redis_client, f"{prefix}:{{{CHANNEL}}}")[-1]
    wait_for(
        browser,
        lambda: (
            browser.execute_script("return sessionStorage.getItem('relay-console:follows')")
            == json.dumps([{"channel": CHANNEL, "from": third}]).replace(" ", "")
        ),
        "the position saved",
    )
    browser.refresh()
    wait_for(browser, lambda: channel_status(browser, CHANNEL) == "live", "C followed again")
    fourth = httpx.post(f"{instance.http}/channels/{CHANNEL}/messages", json=4).json()["id"]
    wait_for(browser, lambda: shown(browser, CHANNEL) == [(fourth, 4)], "only the new message")

    browser.find_element(By.CSS_SELECTOR, f"[data-testid='channel-{CHANNEL}'] [data-testid=unfollow]").click()
    assert browser.find_elements(By.CSS_SELECTOR, f"[data-testid='channel-{CHANNEL}']") == []
    assert browser.execute_script("return sessionStorage.getItem('relay-console:follows')") == "[]"


def test_the_token_is_all_the_console_may_do(relay: RelayFactory, browser: Any) -> None:
    instance = relay(**SECURED).start()
    open_console(browser, instance, connected=False)
    wait_for(browser, lambda: "401" in text_of(browser, "channels-error"), "the 401")
    assert "a token is required" in text_of(browser, "channels-error")
    assert browser.find_elements(By.CSS_SELECTOR, "[data-testid=channel-row]") == []

    writer = token(publish=["*"], subscribe=["*"])
    for channel in ("a1", "b1"):
        httpx.post(
            f"{instance.http}/channels/{channel}/messages",
            json={"on": channel},
            headers={"Authorization": f"Bearer {writer}"},
        ).raise_for_status()

    use_token(browser, token(subscribe=["a*"]))
    wait_for(browser, lambda: state(browser) == "connected" and client_id(browser), "connected with a token")
    wait_for(browser, lambda: set(listed(browser)) == {"a1"}, "only the channels the token may read")
    assert browser.find_element(By.ID, "channels-error").get_attribute("hidden") is not None
    follow(browser, "a1", "0")
    wait_for(browser, lambda: len(shown(browser, "a1")) == 1, "a1's retained message")

    refused = publish_form(browser, "a1", '{"n": 1}')
    assert (refused["status"], refused["code"]) == ("bad", "forbidden"), refused

    fill(browser, "follow-channel", "b1")
    browser.find_element(By.ID, "follow-submit").click()
    wait_for(browser, lambda: "forbidden" in (channel_status(browser, "b1") or ""), "b1 refused")
    assert shown(browser, "b1") == []


async def test_presence_lists_the_console_and_a_python_client(relay: RelayFactory, browser: Any) -> None:
    instance = relay().start()

    def browse(work: Callable[[], Any]) -> Any:
        """Selenium blocks: run it off the event loop, so the Python client keeps being served."""
        return asyncio.to_thread(work)

    async with Relay(instance.http, max_backoff=0.3) as other:
        sub = await other.subscribe(CHANNEL, presence=True)
        theirs = await other.connected()
        await browse(lambda: open_console(browser, instance))
        mine = await browse(lambda: client_id(browser))
        assert mine is not None
        assert mine != theirs
        await browse(lambda: follow(browser, CHANNEL, "$"))
        await browse(lambda: wait_for(browser, lambda: present(browser, CHANNEL) == {mine, theirs}, "both"))
        own = browser.find_element(By.CSS_SELECTOR, f"[data-testid=present][data-client='{mine}']")
        assert "me" in str(own.get_attribute("class"))

        await sub.unsubscribe()  # a leave
        await browse(lambda: wait_for(browser, lambda: present(browser, CHANNEL) == {mine}, "the leave"))
        await other.subscribe(CHANNEL)  # a join
        await browse(
            lambda: wait_for(browser, lambda: present(browser, CHANNEL) == {mine, theirs}, "the join")
        )
    # closed: gone at once
    await browse(lambda: wait_for(browser, lambda: present(browser, CHANNEL) == {mine}, "the close"))
    count = browser.find_element(
        By.CSS_SELECTOR, f"[data-testid='channel-{CHANNEL}'] [data-testid=presence-count]"
    )
    assert count.text == "1"
