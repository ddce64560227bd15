"""The Evaluate tab in a real browser: headless Debian Chromium driven by Playwright, against
`python app.py --model tiny-random` in a subprocess. Screenshots land in tests/artifacts/."""

from __future__ import annotations

import pytest

from tests.conftest import open_page, screenshot, set_number

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Every text the progress line shows, kept by the page itself: tiny-random can finish between two polls.
RECORD_PROGRESS = """() => {
  window.progressSeen = [];
  const el = document.querySelector('#eval-progress');
  new MutationObserver(() => window.progressSeen.push(el.innerText))
    .observe(el, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture
def page(browser, app_url, data_dir):
    pg = open_page(browser, app_url, "Evaluate", "#eval-start")
    yield pg
    pg.close()


def pick(page, elem_id: str, option: str) -> None:
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option).first.click()


def table_rows(page, elem_id: str) -> int:
    """Rows the table holds (the grid counts its header row too); the page renders only those in view."""
    return int(page.locator(f"#{elem_id} [role=grid]").get_attribute("aria-rowcount")) - 1


def cell(page, elem_id: str, row: int, col: int) -> str:
    return page.locator(f'#{elem_id} [data-testid="cell-{row}-{col}"]').inner_text().strip()


def test_run_a_benchmark_see_the_results_and_filter_the_wrong_answers(page):
    assert "tiny-random" in page.inner_text("#eval-model")
    pick(page, "eval-benchmark", "ceval")  # the subsets follow the benchmark
    page.click("#eval-subset input")
    assert page.get_by_role("option", name="hard").count() == 1
    page.keyboard.press("Escape")
    pick(page, "eval-benchmark", "mmlu")
    page.wait_for_function("() => document.querySelector('#eval-subset input').value.startsWith('none')")
    set_number(page, "eval-limit", 10)
    page.evaluate(RECORD_PROGRESS)
    page.click("#eval-start")

    page.wait_for_function("() => document.querySelector('#eval-progress').innerText.includes('Finished')",
                           timeout=60_000)
    final = page.inner_text("#eval-progress")
    seen = page.evaluate("() => window.progressSeen")
    assert "accuracy" in final and "10/10" in final
    assert any("running accuracy" in t for t in seen) or "accuracy" in final
    page.wait_for_function("() => document.querySelector('#eval-headline').innerText.includes('finished 10/10')")
    assert cell(page, "eval-summary", 0, 0) == "overall" and cell(page, "eval-summary", 0, 1) == "10"
    assert "macro" in page.inner_text("#eval-headline")
    page.wait_for_function("() => document.querySelector('#eval-chart .eval-bar') !== null")
    page.wait_for_function("() => document.querySelector('#eval-samples [role=grid]')"
                           ".getAttribute('aria-rowcount') === '11'")
    wrong = sum(cell(page, "eval-samples", r, 6) == "✗" for r in range(10))

    page.click("#eval-wrong-only input")
    page.wait_for_function(f"() => document.querySelector('#eval-samples [role=grid]')"
                           f".getAttribute('aria-rowcount') === '{wrong + 1}'")
    assert table_rows(page, "eval-samples") == wrong <= 10
    assert f"{wrong} wrong" in page.inner_text("#eval-samples-note")
    if wrong:
        assert all(cell(page, "eval-samples", r, 6) == "✗" for r in range(min(wrong, 5)))
        page.locator('#eval-samples [data-testid="cell-0-2"]').click()
        page.wait_for_function("() => document.querySelector('#eval-sample textarea').value.includes('── prompt ──')")
        assert "Answer:" in page.input_value("#eval-sample textarea")  # the whole prompt, not the cell's gist
    screenshot(page, "evaluate-result.png")


def test_history_shows_a_past_run_and_compares_two(page):
    for shots in (0, 2):  # the same seeded questions with and without solved examples
        set_number(page, "eval-limit", 6)
        page.locator("#eval-shots input[type=number]").fill(str(shots))
        page.locator("#eval-shots input[type=number]").press("Enter")
        page.click("#eval-start")
        page.wait_for_function("() => document.querySelector('#eval-headline').innerText.includes('finished 6/6')"
                               f" && document.querySelector('#eval-headline').innerText.includes('{shots}-shot')",
                               timeout=60_000)
    page.click("#eval-refresh")
    page.wait_for_function("() => document.querySelector('#eval-runs [role=grid]').getAttribute('aria-rowcount') > 2")
    newest, older = cell(page, "eval-runs", 0, 0), cell(page, "eval-runs", 1, 0)
    page.locator('#eval-runs [data-testid="cell-1-0"]').click()  # selecting a row shows that run
    page.wait_for_function(f"() => document.querySelector('#eval-headline').innerText.includes('{older}')")
    assert page.input_value("#eval-run input").startswith(older)

    pick(page, "eval-compare-a", older)
    pick(page, "eval-compare-b", newest)
    page.click("#eval-compare-btn")
    page.wait_for_function("() => document.querySelector('#eval-compare-overall').innerText.includes('B−A')")
    assert "6 samples both hold" in page.inner_text("#eval-compare-overall")
    assert cell(page, "eval-compare-subjects", 0, 0) == "overall"


def test_cancel_then_resume_from_the_history(page):
    pick(page, "eval-mode", "gen")  # generation: each batch of 8 takes seconds on a CPU, so Cancel lands mid-run
    set_number(page, "eval-limit", 16)
    page.locator("#eval-shots input[type=number]").fill("0")
    page.locator("#eval-shots input[type=number]").press("Enter")
    page.click("#eval-start")
    page.wait_for_function("() => document.querySelector('#eval-progress').innerText.includes('8/16 done')",
                           timeout=60_000)
    assert "running accuracy" in page.inner_text("#eval-progress")
    page.click("#eval-cancel")
    page.wait_for_function("() => document.querySelector('#eval-progress').innerText.includes('Cancelled')")
    assert "resume it from the history" in page.inner_text("#eval-progress")
    page.wait_for_function("() => document.querySelector('#eval-headline').innerText.includes('cancelled 8/16')")
    page.wait_for_function("() => document.querySelector('#eval-runs [data-testid=\"cell-0-7\"]')"
                           ".innerText.trim() === 'cancelled'")

    page.click("#eval-resume")
    page.wait_for_function("() => document.querySelector('#eval-progress').innerText.includes('Finished')",
                           timeout=60_000)
    page.wait_for_function("() => document.querySelector('#eval-headline').innerText.includes('finished 16/16')")
    assert table_rows(page, "eval-samples") == 16
