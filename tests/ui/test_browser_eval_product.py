"""The Evaluate tab's history in a real browser (Debian Chromium through Playwright, against `python app.py --model
tiny-random`), each check at a desktop size (1440×900) and a phone size (390×844): a running run counting up in the
history with its time left, naming and deleting runs (seen by a second visitor too), the trend of a benchmark's runs
over time, and the phone layout of the chart, the history table and the comparison of two runs. Screenshots land in
tests/artifacts/eval-*-{desktop,phone}.png."""

from __future__ import annotations

import itertools
import re
import time

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.conftest import ARTIFACTS, SIZES, new_visitor, set_number

pytestmark = [pytest.mark.browser, pytest.mark.slow]
# The history's columns: run, name, benchmark, mode, shots, model, quant, status (7), done, score %, started.
NAME, DONE, SCORE = 1, 8, 9

# What the history table shows of every run, kept by the page itself every 100 ms (the table refreshes every 2 s
# while a run goes, and a run of tiny-random lasts seconds): "id\tstatus\tdone" each time a row changes.
RECORD_HISTORY = """() => {
  window.historySeen = [];
  const last = {};
  window.historyRecorder = setInterval(() => {
    for (let r = 0; ; r++) {
      const id = document.querySelector(`#eval-runs [data-testid="cell-${r}-0"]`);
      if (!id) break;
      const cell = (c) => document.querySelector(`#eval-runs [data-testid="cell-${r}-${c}"]`).innerText.trim();
      const row = [id.innerText.trim(), cell(7), cell(8)].join('\\t');
      if (last[row.split('\\t')[0]] !== row) { last[row.split('\\t')[0]] = row; window.historySeen.push(row); }
    }
  }, 100);
}"""

# The row (index) of the history that holds run `id`, or -1 (the table draws only the rows in its view: a new run's
# row is the first).
ROW_OF = """(id) => {
  for (let r = 0; ; r++) {
    const c = document.querySelector(`#eval-runs [data-testid="cell-${r}-0"]`);
    if (!c) return -1;
    if (c.innerText.trim() === id) return r;
  }
}"""

NO_PAGE_OVERFLOW = "() => document.documentElement.scrollWidth <= window.innerWidth + 1"

NOTE = "#eval-trend-note [data-testid=markdown]"  # the trend's note itself (Gradio's progress text sits beside it)
TREND_POINTS = """() => [...document.querySelectorAll('#eval-trend svg .mark-symbol.role-mark path')]
  .map(p => p.getAttribute('aria-label') || '')"""
# The lines drawn (a path through two points or more) and the colour of each.
TREND_LINE = """() => [...document.querySelectorAll('#eval-trend svg .mark-line path')]
  .filter(p => (p.getAttribute('d') || '').includes('L')).map(p => p.getAttribute('stroke') || '')"""
# Each point's label and its height in the plot, as a share of the plot's (0 at the top, 1 at the bottom).
TREND_HEIGHTS = """() => {
  const frame = document.querySelector('#eval-trend svg .role-frame path.background').getBBox();
  return [...document.querySelectorAll('#eval-trend svg .mark-symbol.role-mark path')].map(p => {
    const y = Number(/translate\\([^,]+,([^)]+)\\)/.exec(p.getAttribute('transform'))[1]);
    return [p.getAttribute('aria-label'), y / frame.height];
  });
}"""
# The legend's labels that lie inside the plot's box (the box cuts off what is outside it).
TREND_LEGEND = """() => { const box = document.querySelector('#eval-trend').getBoundingClientRect();
  return [...document.querySelectorAll('#eval-trend svg .role-legend-label text')].filter(t => {
    const r = t.getBoundingClientRect();
    return r.top >= box.top && r.bottom <= box.bottom + 1;
  }).map(t => t.textContent);
}"""


def wait_note(page, test: str, arg=None) -> None:
    """Until the trend's note `t` passes `test` (a JavaScript expression of t and arg)."""
    page.wait_for_function(f"(arg) => {{ const t = document.querySelector('{NOTE}').innerText; return {test}; }}",
                           arg=arg)


def wait_coloured(page) -> None:
    """Until the trend draws its line in a colour, with the legend naming tiny-random's; its colours come in an event
    of their own, after its data."""
    try:
        page.wait_for_function(f"() => {{ const lines = ({TREND_LINE})();"
                               " return lines.length > 0 && lines.every(c => /^#[0-9a-f]{6}$/i.test(c))"
                               f" && ({TREND_LEGEND})().includes('tiny-random · fp32'); }}")
    except PlaywrightTimeout:
        raise AssertionError(f"no line drawn in a colour, or no legend: {page.evaluate(TREND_LINE)}, "
                             f"{page.evaluate(TREND_LEGEND)}") from None


def trend_count(note: str, benchmark: str) -> int:
    if note.startswith(f"No finished {benchmark} run yet"):
        return 0
    m = re.match(rf"(\d+) finished {benchmark} runs? since \d{{4}}-\d\d-\d\d", note)
    assert m, note
    return int(m.group(1))


def open_eval(browser, app_url, size):
    """A new visitor (a fresh browser context) at `size`, with the Evaluate tab open and its history drawn."""
    pg = new_visitor(browser, app_url, size)
    pg.get_by_role("tab", name="Evaluate").click()
    pg.wait_for_selector("#eval-start")
    pg.wait_for_selector("#eval-runs [role=grid]")
    return pg


@pytest.fixture
def page(browser, app_url, data_dir, size):
    pg = open_eval(browser, app_url, size)
    yield pg
    pg.context.close()


def shot(page, name: str, size: str, at: str | None = None) -> None:
    """What the visitor sees (the viewport), scrolled to `at` when given."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if at:
        page.locator(at).scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"eval-{name}-{size}.png"))


def pick(page, elem_id: str, option: str, exact: bool = False) -> None:
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option, exact=exact).first.click()


def options(page, elem_id: str) -> list[str]:
    """The choices a dropdown offers (opened, read, closed)."""
    page.click(f"#{elem_id} input")
    page.wait_for_selector(f"#{elem_id} [role=listbox]", state="attached")  # drawn even with no choice in it
    found = page.locator(f"#{elem_id} [role=option]").all_inner_texts()
    page.keyboard.press("Escape")
    page.locator(f"#{elem_id} input").blur()  # focused, the box would not open on the next click
    return [o.strip() for o in found]


def wait_options(page, elem_id: str, ok, what: str, timeout: float = 30) -> list[str]:
    """The choices of a dropdown once `ok(choices)` holds: the page keeps them out of the DOM until the list is
    opened, so it is opened and read until then."""
    deadline = time.monotonic() + timeout
    while not ok(found := options(page, elem_id)):
        if time.monotonic() > deadline:
            raise AssertionError(f"#{elem_id} never offered {what}: {found}")
        page.wait_for_timeout(300)
    return found


def cell(page, row: int, col: int) -> str:
    return page.locator(f'#eval-runs [data-testid="cell-{row}-{col}"]').inner_text().strip()


def row_of(page, run_id: str) -> int:
    return page.evaluate(ROW_OF, run_id)


def set_form(page, benchmark: str, limit: int, shots: int) -> None:
    pick(page, "eval-benchmark", benchmark, exact=True)
    page.wait_for_function("() => document.querySelector('#eval-subset input').value.startsWith('none')")
    set_number(page, "eval-limit", limit)
    set_number(page, "eval-shots", shots)


# The run the progress line says has finished, or null (the line itself: Gradio's "processing" note sits beside it).
FINISHED = """() => {
  const m = /^Finished (\\S+):/.exec(document.querySelector('#eval-progress .eval-progress-text').innerText.trim());
  return m && m[1];
}"""


def start_run(page, timeout: float = 90_000) -> str:
    """Press Start and wait for the run to finish and be shown; returns its id."""
    before = page.evaluate(FINISHED)
    page.click("#eval-start")
    page.wait_for_function(f"(before) => {{ const id = ({FINISHED})(); return id && id !== before; }}", arg=before,
                           timeout=timeout)
    run_id = page.evaluate(FINISHED)
    page.wait_for_function("(id) => document.querySelector('#eval-headline').innerText.includes(id)", arg=run_id)
    return run_id


def wait_listed(page, run_id: str, listed: bool = True) -> None:
    page.wait_for_function(f"(id) => ({ROW_OF})(id) {'>=' if listed else '<'} 0", arg=run_id)


def toasts(page) -> list[str]:
    return page.evaluate("() => [...document.querySelectorAll('[data-testid=toast-body]')].map(t => t.innerText)")


def locked(page) -> int:
    """Components showing Gradio's red Error overlay (visible ones)."""
    return page.evaluate("() => [...document.querySelectorAll('[data-testid=status-tracker] .error')]"
                         ".filter(e => e.offsetParent !== null).length")


RUN = 1600


def test_a_running_run_counts_up_in_the_history_with_its_time_left_then_shows_finished(page, size):
    # 200 batches of 8: a CI machine ran 400 in about 4 s (one 2 s refresh saw it running), 1600 spans several
    # refreshes on any machine (16-30 s here)
    set_form(page, "mmlu", RUN, 5)
    page.evaluate(RECORD_HISTORY)
    page.click("#eval-start")
    page.wait_for_function("() => [...document.querySelectorAll('#eval-runs [data-testid$=\"-7\"]')]"
                           ".some(c => /^running · about \\d+ (s|min) left$/.test(c.innerText.trim()))",
                           timeout=60_000)
    page.evaluate("() => document.querySelector('#eval-runs [data-testid=\"header-7\"]')"
                  ".scrollIntoView({block: 'center', inline: 'center'})")  # the status, on a phone too
    shot(page, "running", size)
    page.wait_for_function(f"() => ({FINISHED})() !== null", timeout=400_000)
    run_id = page.evaluate(FINISHED)
    assert f"{RUN}/{RUN}" in page.inner_text("#eval-progress .eval-progress-text")
    page.wait_for_function(f"(id) => {{ const r = ({ROW_OF})(id); return r >= 0 && document.querySelector("
                           f"`#eval-runs [data-testid=\"cell-${{r}}-7\"]`).innerText.trim() === 'finished'; }}",
                           arg=run_id)
    page.evaluate("() => clearInterval(window.historyRecorder)")
    row = row_of(page, run_id)
    assert cell(page, row, DONE) == f"{RUN}/{RUN}"
    assert re.fullmatch(r"\d+\.\d", cell(page, row, SCORE)), cell(page, row, SCORE)  # a score, not "—"
    assert cell(page, row, 2) == "mmlu" and cell(page, row, 4) == "5" and cell(page, row, 5) == "tiny-random"

    seen = [line.split("\t") for line in page.evaluate("() => window.historySeen")]
    running = [(status, done) for rid, status, done in seen if rid == run_id and status.startswith("running")]
    assert running, f"the run was never listed as running: {seen}"
    counts = [int(done.split("/")[0]) for _, done in running]
    assert all(done.endswith(f"/{RUN}") for _, done in running), running
    assert len(set(counts)) >= 2 and counts == sorted(counts), f"the count did not move while it ran: {running}"
    assert 0 < max(counts) < RUN, running
    assert any(re.fullmatch(r"running · about \d+ (s|min) left", status) for status, _ in running), running
    assert page.evaluate(NO_PAGE_OVERFLOW)
    shot(page, "finished", size, at="#eval-history")


def test_a_run_is_renamed_and_deleted_from_the_history_and_a_second_visitor_sees_it(page, size, browser, app_url):
    name = f"probe {size} run"
    set_form(page, "mmlu", 4, 0)
    run_id = start_run(page)
    page.click("#eval-refresh")
    wait_listed(page, run_id)
    page.locator(f'#eval-runs [data-testid="cell-{row_of(page, run_id)}-0"]').click()  # select its row
    page.wait_for_function("(id) => document.querySelector('#eval-run input').value.includes(id)", arg=run_id)
    page.wait_for_function("(id) => document.querySelector('#eval-headline').innerText.includes(id)", arg=run_id)
    assert page.input_value("#eval-run-name input") == ""  # not named yet
    page.fill("#eval-run-name input", name)
    page.click("#eval-rename")
    page.wait_for_function(f"([id, name]) => {{ const r = ({ROW_OF})(id); return r >= 0 && document.querySelector("
                           f"`#eval-runs [data-testid=\"cell-${{r}}-1\"]`).innerText.trim() === name; }}",
                           arg=[run_id, name])
    # the heading of the run shown (the run renamed) names it, the run picker shows the name before the id, and so
    # do the lists of runs to compare
    page.wait_for_function("(name) => document.querySelector('#eval-headline h3').innerText.includes(name)",
                           arg=name)
    page.wait_for_function("(label) => document.querySelector('#eval-run input').value.startsWith(label)",
                           arg=f"{name} · {run_id}")
    wait_options(page, "eval-compare-a", lambda found: any(o.startswith(f"{name} · {run_id}") for o in found),
                 "the run by its name")
    assert page.input_value("#eval-run-name input") == name
    shot(page, "history", size, at="#eval-history")
    pick(page, "eval-trend-bench", "mmlu", exact=True)  # the trend of its benchmark holds it
    page.wait_for_function(f"(id) => ({TREND_POINTS})().some(p => p.includes('run: ' + id))", arg=run_id)
    count = trend_count(page.inner_text(NOTE), "mmlu")

    other = open_eval(browser, app_url, size)  # a second visitor: the history is the store's, not the page's
    try:
        wait_listed(other, run_id)
        assert cell(other, row_of(other, run_id), NAME) == name
        wait_options(other, "eval-compare-a", lambda found: any(o.startswith(f"{name} · {run_id}") for o in found),
                     "the run by its name")

        # Delete asks first; declining deletes nothing and says nothing wrong
        asked = []
        page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
        page.click("#eval-delete")
        assert asked and run_id in asked[0], asked
        assert row_of(page, run_id) >= 0 and run_id in page.input_value("#eval-run input")

        page.once("dialog", lambda d: d.accept())
        page.click("#eval-delete")
        page.wait_for_function("(id) => [...document.querySelectorAll('[data-testid=toast-body]')]"
                               ".some(t => t.innerText.includes(id + ' and its samples are deleted'))", arg=run_id)
        # a declined delete that reached the server would have said so by now (one delete at a time, in turn; a
        # toast stays 10 s)
        assert not [t for t in toasts(page) if "Pick a run first" in t], toasts(page)
        assert locked(page) == 0
        wait_listed(page, run_id, listed=False)
        page.wait_for_function("() => document.querySelector('#eval-run input').value === ''")
        assert page.input_value("#eval-run-name input") == ""
        # the run shown is gone: the page no longer shows it as if it were there
        page.wait_for_function("(id) => !document.querySelector('#eval-headline').innerText.includes(id)", arg=run_id)
        assert "No run shown" in page.inner_text("#eval-headline")
        wait_options(page, "eval-compare-a", lambda found: not [o for o in found if run_id in o], "no deleted run")
        # and the trend no longer counts it
        left = f"{count - 1} finished mmlu run" if count > 1 else "No finished mmlu run yet"
        wait_note(page, "t.startsWith(arg)", left)
        page.wait_for_function(f"(id) => !({TREND_POINTS})().some(p => p.includes('run: ' + id))", arg=run_id)
        assert page.evaluate(NO_PAGE_OVERFLOW)
        shot(page, "deleted", size, at="#eval-history")

        other.click("#eval-refresh")  # the second visitor's page no longer lists it either
        wait_listed(other, run_id, listed=False)
        other.wait_for_function("(id) => document.querySelector('#eval-runs').innerText.length > 0"
                                " && !document.querySelector('#eval-runs').innerText.includes(id)", arg=run_id)
        wait_options(other, "eval-compare-a", lambda found: not [o for o in found if run_id in o], "no deleted run")
    finally:
        other.context.close()


def test_the_runs_over_time_trend_draws_a_benchmarks_finished_runs(page, size):
    pick(page, "eval-trend-bench", "cmmlu", exact=True)
    wait_note(page, "t.includes('cmmlu')")
    before = trend_count(page.inner_text(NOTE), "cmmlu")
    if before == 0:  # the empty note, and no line drawn
        assert "its runs appear here over time" in page.inner_text(NOTE)
        assert page.evaluate(TREND_LINE) == []

    set_form(page, "cmmlu", 4, 0)
    runs = [start_run(page)]
    set_number(page, "eval-shots", 2)
    runs.append(start_run(page))
    # each finished run redraws the trend of the benchmark picked there
    wait_note(page, "t.startsWith(arg + ' finished cmmlu runs since')", before + 2)
    note = page.inner_text(NOTE)
    assert "1 model · quantization" in note or "models · quantizations" in note, note
    assert "hover a point" in note
    page.wait_for_function(f"(ids) => {{ const pts = ({TREND_POINTS})();"
                           " return ids.every(id => pts.some(p => p.includes('run: ' + id))); }", arg=runs)
    points = page.evaluate(TREND_POINTS)
    assert len(points) == before + 2, points  # one point per finished run of the benchmark
    mine = [p for p in points if any(f"run: {r}" in p for r in runs)]
    assert any("setting: whole logprob 0-shot" in p for p in mine) and any("2-shot" in p for p in mine), mine
    assert all("model · quant: tiny-random · fp32" in p for p in mine), mine
    wait_coloured(page)
    for label, height in page.evaluate(TREND_HEIGHTS):  # each point at its score, on the 0-100 axis
        score = float(re.search(r"score %: ([\d.]+)", label).group(1))
        assert abs(height - (1 - score / 100)) < 0.02, (label, height)
    box = page.locator("#eval-trend svg.marks").bounding_box()
    assert box["width"] > 200 and box["height"] > 200 and box["x"] + box["width"] <= SIZES[size]["width"] + 1, box

    pick(page, "eval-trend-bench", "ceval", exact=True)  # another benchmark: its own runs, not these
    wait_note(page, "t.includes('ceval')")
    page.wait_for_function(f"(ids) => !({TREND_POINTS})().some(p => ids.some(id => p.includes('run: ' + id)))",
                           arg=runs)
    pick(page, "eval-trend-bench", "cmmlu", exact=True)
    wait_note(page, "t.startsWith(arg + ' finished cmmlu runs')", before + 2)
    page.wait_for_function(f"(n) => ({TREND_POINTS})().length === n", arg=before + 2)
    wait_coloured(page)
    assert page.evaluate(NO_PAGE_OVERFLOW)
    shot(page, "trend", size, at="#eval-trend-box")


BARS = """() => [...document.querySelectorAll('#eval-chart .eval-bar')].map(b => {
  const [name, track, pct] = b.children, r = b.getBoundingClientRect(), t = track.getBoundingClientRect();
  return {left: r.left, right: r.right, top: r.top, trackW: t.width, trackH: t.height,
          fillW: track.firstElementChild.getBoundingClientRect().width, pct: parseFloat(pct.innerText),
          name: name.innerText};
})"""

# The element of the history table that scrolls sideways: its sizes, then scrolled to its right end.
TABLE_SCROLL = """() => {
  const box = [...document.querySelectorAll('#eval-runs *')].find(e =>
    ['auto', 'scroll'].includes(getComputedStyle(e).overflowX) && e.scrollWidth > e.clientWidth + 1);
  if (!box) return null;
  const before = box.getBoundingClientRect();
  box.scrollLeft = box.scrollWidth;
  const after = box.getBoundingClientRect(), last = document.querySelector('#eval-runs [data-testid="header-10"]')
    .getBoundingClientRect();
  return {scrollWidth: box.scrollWidth, clientWidth: box.clientWidth, left: before.left, right: before.right,
          scrollLeft: box.scrollLeft, lastLeft: last.left, lastRight: last.right, rightAfter: after.right};
}"""


def test_the_chart_history_and_comparison_fit_the_screen_and_the_comparison_names_the_shots(page, size):
    view = SIZES[size]
    set_form(page, "mmlu", 8, 5)
    five = start_run(page)
    set_number(page, "eval-shots", 0)
    zero = start_run(page)

    # the per-subject chart: horizontal bars, one row per subject, best first, inside the screen's width
    page.wait_for_function("() => document.querySelectorAll('#eval-chart .eval-bar').length > 0")
    bars = page.evaluate(BARS)
    n = int(re.search(r"(\d+) subjects?, best first", page.inner_text("#eval-chart")).group(1))
    assert len(bars) == n >= 1
    assert all(b["left"] >= 0 and b["right"] <= view["width"] + 1 for b in bars), bars
    assert all(a["top"] < b["top"] for a, b in itertools.pairwise(bars)), "the bars are not one row per subject"
    assert all(b["trackW"] > 4 * b["trackH"] for b in bars), bars  # each bar's track lies along the row
    assert all(abs(b["fillW"] - b["trackW"] * b["pct"] / 100) <= 1.5 for b in bars), bars  # its length is the score
    assert [b["pct"] for b in bars] == sorted((b["pct"] for b in bars), reverse=True)
    assert all(b["name"] for b in bars)
    assert page.evaluate("() => { const c = document.querySelector('#eval-chart');"
                         " return c.scrollWidth <= c.clientWidth + 1; }")
    assert page.evaluate(NO_PAGE_OVERFLOW), page.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
    shot(page, "chart", size, at="#eval-chart")

    # the history table: inside the screen; on a phone its columns scroll sideways in its own box
    table = page.locator("#eval-runs").bounding_box()
    assert table["x"] >= 0 and table["x"] + table["width"] <= view["width"] + 1, table
    scroll = page.evaluate(TABLE_SCROLL)
    if size == "phone":
        assert scroll is not None, "the history's columns neither fit nor scroll"
        assert scroll["scrollWidth"] > scroll["clientWidth"] and scroll["scrollLeft"] > 0, scroll
        assert scroll["right"] <= view["width"] + 1 and scroll["rightAfter"] == scroll["right"], scroll
        assert scroll["left"] - 1 <= scroll["lastLeft"] and scroll["lastRight"] <= scroll["right"] + 1, scroll
    assert page.evaluate(NO_PAGE_OVERFLOW), "the history table widens the page"
    shot(page, "history-table", size, at="#eval-runs")

    # two runs of one benchmark with different shots compared: the heading says which is which
    pick(page, "eval-compare-a", five)
    pick(page, "eval-compare-b", zero)
    page.click("#eval-compare-btn")
    page.wait_for_function("() => document.querySelector('#eval-compare-overall').innerText.includes('B−A')")
    text = page.inner_text("#eval-compare-overall")
    a = next(line for line in text.splitlines() if line.startswith("A ="))
    b = next(line for line in text.splitlines() if line.startswith("B ="))
    assert five in a and "mmlu logprob 5-shot" in a and "0-shot" not in a, a
    assert zero in b and "mmlu logprob 0-shot" in b and "5-shot" not in b, b
    assert "8 samples both hold" in text  # the same seeded items, with and without solved examples
    assert page.evaluate(NO_PAGE_OVERFLOW), "the comparison widens the page"
    shot(page, "compare", size, at="#eval-compare-overall")
