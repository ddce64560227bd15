"""The page in a real browser: headless Debian Chromium driven by Playwright, against
`python app.py --model tiny-random` in a subprocess. Screenshots land in tests/artifacts/."""

from __future__ import annotations

import time

import pytest

from tests.conftest import ARTIFACTS, open_page, screenshot, set_number

pytestmark = [pytest.mark.browser, pytest.mark.slow]



@pytest.fixture
def page(browser, app_url):
    pg = open_page(browser, app_url)
    yield pg
    pg.close()


def reply_text(page) -> str:
    bots = page.locator('#chatbot [data-testid="bot"]')
    return bots.last.inner_text() if bots.count() else ""


def test_type_stream_stop_and_screenshot(page):
    info = page.inner_text("#model-info")
    assert "tiny-random" in info and "replies are noise" in info
    set_number(page, "max-new-tokens", 4000)  # far more than it can produce before Stop is pressed
    set_number(page, "seed", 42)
    page.click("#chat-input textarea")
    page.keyboard.type("Tell me a long story about a fox. 讲一个故事。")
    page.keyboard.press("Enter")

    page.wait_for_function("() => { const b = document.querySelectorAll('#chatbot [data-testid=bot]');"
                           " return b.length && b[b.length - 1].innerText.trim().length > 0; }")
    first = len(reply_text(page))
    deadline = time.monotonic() + 20
    while len(reply_text(page)) <= first and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(reply_text(page)) > first, "the reply does not grow: it is not streamed"
    assert "generating" in page.inner_text("#reply-stats")

    page.click("#stop-btn")
    page.wait_for_function("() => document.querySelector('#reply-stats').innerText.includes('stopped')",
                           timeout=10_000)
    stopped = reply_text(page)
    time.sleep(1.5)
    assert reply_text(page) == stopped, "text kept arriving after Stop"
    stats = page.inner_text("#reply-stats")
    assert "seed 42" in stats and "completion" in stats
    completion = int(stats.split("completion ")[1].split(" tok")[0].replace(",", ""))
    assert 0 < completion < 4000
    screenshot(page, "chat-after-stop.png")


def test_preset_fills_the_system_prompt_and_editing_marks_it_custom(page):
    page.click("#preset input")
    page.get_by_role("option", name="简洁回答").click()
    page.wait_for_function("() => document.querySelector('#system-prompt textarea').value.startsWith('你是')")
    page.fill("#system-prompt textarea", "You answer in haiku.")
    page.locator("#system-prompt textarea").press("End")
    page.keyboard.type(" Always.")
    page.wait_for_function("() => document.querySelector('#preset input').value === 'Custom'")


def wait_for_reply_done(page, replies: int) -> None:
    """The reply's stats are in and Send is back (the page holds Enter in the box while it shows "Replying…",
    which lasts until the conversation is saved after the reply)."""
    page.wait_for_function(
        f"() => document.querySelectorAll('#chatbot [data-testid=bot]').length === {replies}"
        " && document.querySelector('#reply-stats').innerText.includes('context')"
        " && document.querySelector('#send-btn').disabled === false")


def test_markdown_renders_and_editing_a_message_regenerates_from_there(page):
    set_number(page, "max-new-tokens", 16)
    page.fill("#chat-input textarea", "你好 **bold**\n```python\ndef f():\n    return 1\n```")
    page.press("#chat-input textarea", "Enter")
    wait_for_reply_done(page, 1)
    user = page.locator('#chatbot [data-testid="user"]').first
    assert user.locator("strong").inner_text() == "bold"
    assert "def f():" in user.locator("pre code").inner_text()  # a fenced block becomes a code block
    assert "你好" in user.inner_text()

    page.fill("#chat-input textarea", "second question")
    page.press("#chat-input textarea", "Enter")
    wait_for_reply_done(page, 2)
    page.locator('#chatbot [data-testid="user"]').first.hover()
    page.locator('#chatbot button[aria-label="Edit"]').first.click()
    page.locator("#chatbot textarea.edit-textarea").fill("an edited first question")
    page.locator('#chatbot button[aria-label="Submit"]').click()
    wait_for_reply_done(page, 1)  # the turns after the edited message are gone, one new reply
    assert page.locator('#chatbot [data-testid="user"]').all_inner_texts() == ["an edited first question"]


def test_json_mode_shows_the_parsed_object(page):
    page.get_by_text("JSON mode and tools").click()
    page.locator("#json-mode input[type=checkbox]").check()
    page.click("#json-schema .cm-content")
    schema = '{"type": "object", "properties": {"city": {"type": "string"}, "tags": {"type": "array", ' \
             '"items": {"type": "integer"}}}, "required": ["city", "tags"]}'
    page.keyboard.insert_text(schema)
    set_number(page, "max-new-tokens", 96)
    set_number(page, "seed", 7)
    page.click("#chat-input textarea")
    page.keyboard.type("Give me a city and some numbers as JSON.")
    page.keyboard.press("Enter")
    page.wait_for_selector("#json-panel:not(.hidden) #json-check", state="visible", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#json-check').innerText.includes('matches the schema')")
    view = page.inner_text("#json-view")
    assert "city" in view and "tags" in view, view
    screenshot(page, "chat-json-mode.png")
    page.locator("#json-panel").first.screenshot(path=str(ARTIFACTS / "chat-json-panel.png"))


def test_two_pages_chatting_at_once_both_stream(browser, app_url):
    """Two visitors send at the same moment: both replies grow at the same time (they are rows of one running
    batch), neither waits for the other to finish."""
    pages = [open_page(browser, app_url) for _ in range(2)]
    try:
        for n, pg in enumerate(pages):
            set_number(pg, "max-new-tokens", 4000)  # far more than either produces before Stop
            set_number(pg, "seed", 7 + n)
            pg.fill("#chat-input textarea", f"Visitor {n}: tell me a long story.")
        for pg in pages:
            pg.press("#chat-input textarea", "Enter")
        for pg in pages:
            pg.wait_for_function("() => document.querySelector('#send-btn').disabled")
        lengths = []  # (page 0's reply length, page 1's) at moments when both are still replying
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(lengths) < 6:
            busy = [pg.evaluate("() => document.querySelector('#send-btn').disabled") for pg in pages]
            now = [len(reply_text(pg)) for pg in pages]
            assert all(busy), f"a reply ended before Stop (busy {busy}, lengths {now})"
            if all(now) and (not lengths or all(a > b for a, b in zip(now, lengths[-1]))):
                lengths.append(now)
            time.sleep(0.2)
        assert len(lengths) >= 3, f"the two replies did not grow together: {lengths}"
        for pg in pages:
            pg.click("#stop-btn")
        for pg in pages:
            pg.wait_for_function("() => document.querySelector('#reply-stats').innerText.includes('stopped')",
                                 timeout=20_000)
            assert "seed" in pg.inner_text("#reply-stats")
    finally:
        for pg in pages:
            pg.close()
