"""The Evaluate tab's quantization report in a real browser: headless Debian Chromium driven by Playwright, against
`python app.py --model tiny-random` in a subprocess. Screenshots land in tests/artifacts/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import open_page, screenshot, set_number

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Every text the progress line shows, kept by the page itself: a poll may miss a short phase.
RECORD_PROGRESS = """() => {
  window.quantSeen = [];
  const el = document.querySelector('#quant-progress');
  new MutationObserver(() => window.quantSeen.push(el.innerText))
    .observe(el, {subtree: true, childList: true, characterData: true});
}"""
FINISHED = "() => document.querySelector('#quant-progress').innerText.includes('Finished quant-')"


@pytest.fixture
def page(browser, app_url, data_dir):
    pg = open_page(browser, app_url, "Evaluate", "#quant-start")
    yield pg
    pg.close()


def fill_form(page, variants: list[str], benchmark: str, limit: int) -> None:
    for elem_id, values in (("quant-variants", variants), ("quant-benchmarks", [benchmark]), ("quant-shots", ["0"])):
        if elem_id != "quant-shots":
            page.click(f"#{elem_id} [title=Clear]")
        box = page.locator(f"#{elem_id} input")
        for v in values:  # typed, the list narrows to it, and Enter takes it
            box.fill(v)
            page.wait_for_function(f"() => [...document.querySelectorAll('#{elem_id} [role=option]')]"
                                   f".some(o => o.getAttribute('aria-label') === '{v}')")
            box.press("Enter")
        box.press("Escape")
    set_number(page, "quant-limit", limit)
    for elem_id, values in (("quant-variants", variants), ("quant-benchmarks", [benchmark])):
        assert [t.strip() for t in page.locator(f"#{elem_id} .token").all_inner_texts()] == values


def test_a_report_shows_its_progress_and_renders_with_downloads(page):
    assert page.input_value("#quant-model input") == "tiny-random"  # the loaded model, by default
    assert "chat model is freed" in page.inner_text("#quant-note")
    fill_form(page, ["fp32", "bf16"], "mmlu:mini", 8)
    page.evaluate(RECORD_PROGRESS)
    page.click("#quant-start")
    page.wait_for_function(FINISHED, timeout=180_000)

    seen = page.evaluate("() => window.quantSeen")
    assert any("Variant 1/2 fp32: loading it" in t for t in seen)
    assert any("variant 1/2 fp32 · mmlu:mini" in t and "running accuracy" in t for t in seen)
    assert any("variant 2/2 bf16 · mmlu:mini" in t and "/8" in t for t in seen)
    assert any(" left · " in t for t in seen)  # the time left, once the first batches gave a rate
    final = page.inner_text("#quant-progress")
    assert "2/2 variants ran" in final
    report_id = final.split("Finished ")[1].split(":")[0]

    page.wait_for_function(f"() => document.querySelector('#quant-headline').innerText.includes('{report_id}')")
    assert "finished" in page.inner_text("#quant-headline")
    frame = page.frame_locator("#quant-report-frame")
    frame.locator("svg").first.wait_for()  # the report's own inline charts
    body = frame.locator("body").inner_text()
    assert "fp32" in body and "bf16" in body and "mmlu:mini" in body
    links = page.locator("#quant-files [data-testid=download-link]")
    assert sorted(links.evaluate_all("els => els.map(e => e.getAttribute('download'))")) == [
        f"{report_id}.quant.{ext}" for ext in ("html", "json", "md")]
    with page.expect_download() as got:  # the JSON export, downloaded as a person would
        page.locator(f"#quant-files [download='{report_id}.quant.json']").click()
    exported = json.loads(Path(got.value.path()).read_text(encoding="utf-8"))
    assert exported["id"] == report_id and [v["variant"] for v in exported["variants"]] == ["fp32", "bf16"]
    assert all(v["results"]["mmlu:mini"]["n"] == 8 for v in exported["variants"])
    page.wait_for_function(f"() => document.querySelector('#quant-reports').innerText.includes('{report_id}')")
    screenshot(page, "evaluate-quant-report.png")

    page.reload()  # an earlier report: picked from the list, rendered again
    page.get_by_role("tab", name="Evaluate").click()
    page.wait_for_selector("#quant-reports [role=grid]")
    page.locator('#quant-reports [data-testid="cell-0-0"]').click()
    page.wait_for_function(f"() => document.querySelector('#quant-headline').innerText.includes('{report_id}')")
    page.frame_locator("#quant-report-frame").locator("svg").first.wait_for()


def test_cancel_then_resume(page):
    fill_form(page, ["fp32", "bf16"], "mmlu", 200)  # 25 batches a variant: seconds, so Cancel lands mid-report
    page.click("#quant-start")
    page.wait_for_function("() => document.querySelector('#quant-progress').innerText.includes('running accuracy')",
                           timeout=120_000)
    page.click("#quant-cancel")
    page.wait_for_function("() => document.querySelector('#quant-progress').innerText.includes('Cancelled')",
                           timeout=60_000)
    assert "press Resume" in page.inner_text("#quant-progress")
    page.wait_for_function("() => document.querySelector('#quant-headline').innerText.includes('cancelled')")
    page.click("#quant-resume")
    page.wait_for_function(FINISHED, timeout=180_000)
    page.wait_for_function("() => document.querySelector('#quant-headline').innerText.includes('finished')")


def test_the_section_fits_a_phone(browser, app_url, data_dir):
    pg = browser.new_page(viewport={"width": 390, "height": 844})
    pg.set_default_timeout(30_000)
    try:
        pg.goto(app_url)
        pg.get_by_role("tab", name="Evaluate").click()
        pg.wait_for_selector("#quant-start")
        fill_form(pg, ["fp32", "bf16"], "mmlu:mini", 4)
        pg.click("#quant-start")
        pg.wait_for_function(FINISHED, timeout=180_000)
        pg.frame_locator("#quant-report-frame").locator("svg").first.wait_for()
        for elem in ("#quant-start", "#quant-progress", "#quant-report-frame", "#quant-files", "#quant-reports"):
            box = pg.locator(elem).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390 + 1, (elem, box)
        assert pg.evaluate("() => document.documentElement.scrollWidth") <= 390 + 1  # no sideways scrolling
        screenshot(pg, "evaluate-quant-phone.png")
    finally:
        pg.close()
