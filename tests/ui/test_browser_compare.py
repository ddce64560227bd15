"""The Compare tab in a real browser: headless Debian Chromium driven by Playwright, against
`python app.py --model tiny-random` in a subprocess. Screenshots land in tests/artifacts/."""

from __future__ import annotations

import sqlite3

import pytest

from lab.config import runs_dir
from tests.conftest import open_page, open_tab, screenshot, set_number

pytestmark = [pytest.mark.browser, pytest.mark.slow]

INPUT = "Tell me a long story about a fox. 讲一个关于狐狸的故事。"
BOTH_STREAMING = """() => {
  const status = document.querySelector('#cmp-status').innerText;
  const a = document.querySelector('#cmp-out-0').innerText.trim();
  const b = document.querySelector('#cmp-out-1').innerText.trim();
  return status.includes('Generating') && a.length > 0 && b.length > 0 ? [a.length, b.length] : false;
}"""


@pytest.fixture
def page(browser, app_url):
    pg = open_page(browser, app_url)
    open_tab(pg, "Compare", "#cmp-input textarea")  # drawn, and its starting values set: what is typed next stays
    yield pg
    pg.close()


def set_max_new(page, pane: int, value: int) -> None:
    """Set a pane's max new tokens (shown on the variant, outside its Sampling panel)."""
    set_number(page, f"cmp-max-new-{pane}", value)
    assert page.input_value(f"#cmp-max-new-{pane} input[type=range]") == str(value)


def set_seed(page, pane: int, value: int) -> None:
    """Show the pane's Sampling panel and set its seed (the panel is drawn with the tab, so a seed typed as it
    opens stays: compare_panes says why it is no accordion)."""
    box = page.locator(f"#cmp-seed-{pane} input[type=number]")
    if not box.is_visible():
        page.click(f"#cmp-sampling-btn-{pane}")
    set_number(page, f"cmp-seed-{pane}", value)
    assert box.input_value() == str(value)


def out_len(page, pane: int) -> int:
    return len(page.inner_text(f"#cmp-out-{pane}").strip())


def votes_in_db() -> list[tuple]:
    with sqlite3.connect(runs_dir() / "lab.db") as db:  # the app's run history: LAB_RUNS_DIR, inherited
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name='votes'").fetchone():
            return []
        return db.execute("SELECT input, winner, winner_key, variants, outputs FROM votes ORDER BY id").fetchall()


def test_two_panes_stream_together_then_a_blind_vote_is_recorded_and_revealed(page):
    before = len(votes_in_db())
    page.fill("#cmp-name-1 input, #cmp-name-1 textarea", "terse")
    page.locator("#cmp-blind input").check()
    page.fill("#cmp-input textarea", INPUT)
    for pane in (0, 1):
        set_max_new(page, pane, 240)  # long enough to watch both panes grow
    for pane, seed in ((0, 42), (1, 7)):  # each variant's own seed (a row of the engine's batch keeps its own)
        set_seed(page, pane, seed)
    for pane, seed in ((0, 42), (1, 7)):  # still there as Run is pressed
        assert page.input_value(f"#cmp-max-new-{pane} input[type=number]") == "240"
        assert page.input_value(f"#cmp-seed-{pane} input[type=number]") == str(seed)
    page.click("#cmp-run")

    # Both panes hold partial text while the one batched generation is still running.
    first = page.wait_for_function(BOTH_STREAMING, timeout=60_000).json_value()
    assert page.inner_text("#cmp-label-0").strip() == "Response 1"  # blind: no variant names while it runs
    page.wait_for_function(f"() => document.querySelector('#cmp-out-0').innerText.trim().length > {first[0]}"
                           f" && document.querySelector('#cmp-out-1').innerText.trim().length > {first[1]}",
                           timeout=60_000)
    page.wait_for_function("() => document.querySelector('#cmp-status').innerText.includes('one batched generation')",
                           timeout=120_000)
    assert out_len(page, 0) > first[0] and out_len(page, 1) > first[1], "the panes grew after the first look"
    assert "hidden until you vote" in page.inner_text("#cmp-stats-0")
    labels = [page.inner_text(f"#cmp-label-{i}") for i in (0, 1)]
    assert labels == ["Response 1", "Response 2"]

    page.click("#cmp-vote-1")
    page.wait_for_function("() => document.querySelector('#cmp-vote-note').innerText.includes('recorded')")
    revealed = [page.inner_text(f"#cmp-label-{i}") for i in (0, 1)]
    assert sorted(name for label in revealed for name in ("A", "terse") if f"({name})" in label) == ["A", "terse"]
    assert "your pick" in revealed[1] and "your pick" not in revealed[0]
    winner = "A" if "(A)" in revealed[1] else "terse"
    for pane in (0, 1):  # revealed: each pane's tokens, first-token time, speed and its own variant's seed
        stats = page.inner_text(f"#cmp-stats-{pane}")
        seed = 42 if "(A)" in revealed[pane] else 7
        assert "prompt" in stats and "first token" in stats and "tok/s" in stats and f"seed {seed} " in stats + " "
        assert 0 < int(stats.split("completion ")[1].split(" tok")[0]) <= 240

    rows = votes_in_db()
    assert len(rows) == before + 1
    text, win_index, win_key, variants, outputs = rows[-1]
    assert text == INPUT and win_key.startswith(f"{winner} #") and '"terse"' in variants and len(outputs) > 2
    assert (["A", "terse"][win_index]) == winner

    page.wait_for_function("() => document.querySelector('#cmp-board-variants').innerText.includes('terse #')")
    board = page.inner_text("#cmp-board-variants")
    assert "A #" in board and "95% interval" in board
    page.locator("#cmp-tally-box").get_by_text("Raw tally").click()
    page.wait_for_function("() => document.querySelector('#cmp-tally')?.innerText.includes('terse #')")
    tally = page.inner_text("#cmp-tally")
    assert "A #" in tally and "first won" in tally and "both bad" in tally
    page.click("#cmp-diff-btn")
    page.wait_for_function("() => document.querySelector('#cmp-diff del, #cmp-diff ins') !== null")
    page.locator("#cmp-pane-0").scroll_into_view_if_needed()
    screenshot(page, "compare-blind-vote.png")


def test_load_a_shipped_set_and_export_markdown(page):
    page.click("#cmp-set input")
    page.get_by_role("option", name="step-by-step").click()
    page.click("#cmp-load")
    page.wait_for_function("() => document.querySelector('#cmp-set-note').innerText.includes('Loaded')")
    page.wait_for_selector("#cmp-variant-2", state="visible")  # three variants: a third pane opens
    assert not page.locator("#cmp-variant-3").is_visible()
    assert page.input_value("#cmp-name-2 input, #cmp-name-2 textarea") == "step-by-step t=1.0"
    for pane in range(3):
        set_max_new(page, pane, 16)
    page.fill("#cmp-input textarea", "What is 17 * 3?")
    page.click("#cmp-run")
    page.wait_for_function("() => document.querySelector('#cmp-status').innerText.includes('one batched generation')",
                           timeout=60_000)
    assert "(3) · " not in page.inner_text("#cmp-label-2") and "step-by-step t=1.0" in page.inner_text("#cmp-label-2")
    with page.expect_download() as download:
        page.click("#cmp-export-md")
        page.locator("#cmp-export-file a").first.click()
    text = open(download.value.path(), encoding="utf-8").read()
    assert "## Input" in text and "What is 17 * 3?" in text and "step-by-step t=1.0" in text
