"""Issue 18's Compare tab in a real browser (Debian Chromium through Playwright, against `python app.py --model
tiny-random`), each check at a desktop size (1440×900) and a phone size (390×844): what a run costs, before and
after; long code lines clear of the copy icon; a tally whose headers do not clash with variants named A and B;
"both are bad" recorded and rated; no glyph drawn as a missing-glyph box; the outputs brought into view and tables
that scroll sideways; errors beside their cause that lock nothing; and a seed typed as its panel opens that stays.
Screenshots land in tests/artifacts/compare-*-{desktop,phone}.png (the README's come from test_readme_screenshots).

One variant of the code-line check runs on a canned OpenAI-compatible server started here (127.0.0.1), so that its
output holds a real code block; tiny-random's replies are noise."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from lab.compare.ratings import leaderboard
from lab.compare.votes import VoteStore
from lab.config import runs_dir
from tests.conftest import ARTIFACTS, SIZES, new_visitor, open_tab, set_number

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUN_DONE = "() => document.querySelector('#cmp-status').innerText.includes('new tokens in all')"
NO_PAGE_OVERFLOW = "() => document.documentElement.scrollWidth <= window.innerWidth + 1"


@pytest.fixture
def page(browser, app_url, size):
    """A new visitor at `size` with the Compare tab drawn and settled (conftest.open_tab)."""
    pg = new_visitor(browser, app_url, size)
    open_tab(pg, "Compare", "#cmp-input textarea")
    yield pg
    pg.context.close()


def shot(page, name: str, size: str, at: str | None = None, full: bool = False) -> None:
    """What the visitor sees (the viewport, scrolled to `at` when given), or the whole page."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if at:
        page.locator(at).scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"compare-{name}-{size}.png"), full_page=full)


def run_all(page, text: str = "Name three rivers. 说出三条河。") -> None:
    page.fill("#cmp-input textarea", text)
    page.click("#cmp-run")
    page.wait_for_function(RUN_DONE, timeout=120_000)


def sampling(page, pane: int) -> None:
    """Show a variant's Sampling panel (drawn with the tab; the button shows and hides it in the browser)."""
    page.click(f"#cmp-sampling-btn-{pane}")
    page.wait_for_selector(f"#cmp-seed-{pane} input[type=number]", state="visible")


def problems(page) -> dict:
    """What would lock or hide a reason: Gradio's error overlays (drawn at all) and error toasts."""
    return page.evaluate("""() => ({
      overlays: document.querySelectorAll('[data-testid=status-tracker] .error').length,
      toasts: [...document.querySelectorAll('[data-testid=toast-body]')].map(t => t.innerText)})""")


def blind_run(page, names: tuple[str, str], seed: int) -> None:
    """Two variants named `names`, each with its own seed (so their fingerprints, and the board's rows, are this
    test's own), short replies, in blind mode."""
    for pane, name in enumerate(names):
        page.fill(f"#cmp-name-{pane} input, #cmp-name-{pane} textarea", name)
        set_number(page, f"cmp-max-new-{pane}", 16)
        sampling(page, pane)
        set_number(page, f"cmp-seed-{pane}", seed + pane)
    page.locator("#cmp-blind input").check()
    run_all(page)
    page.wait_for_selector("#cmp-vote-row", state="visible")


def fingerprint_keys(page) -> list[str]:
    """The two variants' keys ("name #fingerprint"), from the labels revealed after the vote."""
    keys = []
    for pane in (0, 1):
        label = page.inner_text(f"#cmp-label-{pane}")
        m = re.search(r"\((.+?)\)\s*#([0-9a-f]{6})", label)
        assert m, label
        keys.append(f"{m.group(1)} #{m.group(2)}")
    return keys


def table(page, elem_id: str) -> tuple[list[str], list[list[str]]]:
    """A Gradio Dataframe's header cells and rows, as the page shows them (the rows drawn in its view)."""
    return page.evaluate("""(id) => {
      const root = document.querySelector('#' + id);
      const heads = [...root.querySelectorAll('thead th')].map(h => h.innerText.trim()).filter(t => t.length);
      const rows = [];
      for (let r = 0; root.querySelector(`[data-testid="cell-${r}-0"]`); r++) {
        rows.push(heads.map((_, c) => (root.querySelector(`[data-testid="cell-${r}-${c}"]`) || {innerText: ''})
          .innerText.trim()));
      }
      return [heads, rows];
    }""", elem_id)


def last_vote() -> dict:
    with sqlite3.connect(runs_dir() / "lab.db") as db:  # the app's run history: LAB_RUNS_DIR, inherited
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM votes ORDER BY id DESC LIMIT 1").fetchone())


# ---- 1. what a run costs ------------------------------------------------------------------------------------
def test_each_variant_shows_its_cost_before_a_run_and_the_run_says_what_it_took(page, size):
    for pane in (0, 1):  # each variant's max new tokens is on the variant, no panel to open
        assert page.locator(f"#cmp-max-new-{pane} input[type=number]").is_visible()
        assert not page.locator(f"#cmp-seed-{pane} input[type=number]").is_visible()  # the panel is closed
    cost = page.inner_text("#cmp-cost")
    assert "2 variants in one batch, up to 1,024 new tokens in all (512 + 512)" in cost, cost
    set_number(page, "cmp-max-new-0", 48)
    set_number(page, "cmp-max-new-1", 32)
    page.wait_for_function("() => document.querySelector('#cmp-cost').innerText.includes('80 new tokens in all')")
    assert "(48 + 32); the longest, 48, sets the time" in page.inner_text("#cmp-cost")
    page.locator("#cmp-panes").get_by_text("3", exact=True).click()
    page.wait_for_function("() => document.querySelector('#cmp-cost').innerText.includes('3 variants')")
    assert "(48 + 32 + 512)" in page.inner_text("#cmp-cost")
    page.locator("#cmp-panes").get_by_text("2", exact=True).click()
    page.wait_for_function("() => document.querySelector('#cmp-cost').innerText.includes('2 variants')")
    shot(page, "cost", size, at="#cmp-run")
    page.fill("#cmp-input textarea", "Why is the sky blue?")
    page.click("#cmp-run")
    page.wait_for_function("() => document.querySelector('#cmp-status').innerText.includes('up to 48 new tokens')")
    page.wait_for_function(RUN_DONE, timeout=120_000)
    assert "up to 48 new tokens" in page.inner_text("#cmp-label-0")
    assert "up to 32 new tokens" in page.inner_text("#cmp-label-1")
    status = page.inner_text("#cmp-status")
    m = re.search(r"one batched generation, ([\d.]+) s: ([\d,]+) new tokens in all, ([\d,]+) prompt tokens", status)
    assert m, status
    made = [int(re.search(r"completion ([\d,]+) tok", page.inner_text(f"#cmp-stats-{p}")).group(1)) for p in (0, 1)]
    assert made[0] <= 48 and made[1] <= 32 and int(m.group(2).replace(",", "")) == sum(made)
    assert float(m.group(1)) > 0
    shot(page, "took", size, at="#cmp-status")


# ---- 2. long code lines --------------------------------------------------------------------------------------
CODE_LINE = "print('" + "a_long_identifier_" * 14 + "')"
CANNED = f"```python\n{CODE_LINE}\n```\n\nThe line above is long on purpose: it must wrap, not hide under the icon."


class CannedOpenAI(BaseHTTPRequestHandler):
    """A model behind an OpenAI-compatible API that always answers CANNED, streamed in small pieces."""

    def _json(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # the names http.server calls
        if self.path.rstrip("/").endswith("/v1/models"):
            return self._json({"object": "list", "data": [{"id": "canned", "object": "model", "created": 0,
                                                           "owned_by": "tests", "max_model_len": 8192}]})
        self._json({"error": {"message": "not found"}}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if not self.path.endswith("/v1/chat/completions") or not body.get("stream"):
            return self._json({"error": {"message": "not found"}}, 404)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        pieces = [CANNED[i:i + 24] for i in range(0, len(CANNED), 24)]

        def event(choices: list, usage: dict | None = None) -> None:
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "canned", "choices": choices}
            if usage:
                chunk["usage"] = usage
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        for piece in pieces:
            event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        event([], {"prompt_tokens": 12, "completion_tokens": len(pieces), "total_tokens": 12 + len(pieces)})
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def canned_model():
    server = ThreadingHTTPServer(("127.0.0.1", 0), CannedOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"openai:http://127.0.0.1:{server.server_address[1]}/v1#canned"
    server.shutdown()


# Every line box of text in pane 1's output, the copy icon's box, and how the code block and its pane overflow.
CODE_GEOMETRY = """() => {
  const pane = document.querySelector('#cmp-out-1');
  const icons = [...pane.querySelectorAll('button')].filter(b => /copy/i.test(b.getAttribute('aria-label') || b.title || ''));
  const range = document.createRange();
  const lines = [];
  const walk = document.createTreeWalker(pane.querySelector('.prose') || pane, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    if (!n.textContent.trim()) continue;
    range.selectNodeContents(n);
    for (const r of range.getClientRects()) lines.push([r.left, r.top, r.right, r.bottom]);
  }
  const pre = pane.querySelector('pre');
  const box = (e) => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const clipped = [...pane.querySelectorAll('*')].filter(e => {
    const s = getComputedStyle(e);
    return e.scrollWidth > e.clientWidth + 1 && !['auto', 'scroll'].includes(s.overflowX) && s.overflowX !== 'visible';
  }).map(e => e.tagName + '.' + e.className);
  return {icons: icons.map(box), lines, pane: box(pane), pre: pre ? box(pre) : null,
          preScroll: pre ? [pre.scrollWidth, pre.clientWidth, getComputedStyle(pre).overflowX] : null, clipped};
}"""


def test_long_code_lines_wrap_and_keep_clear_of_the_copy_icon(page, size, canned_model):
    model = page.locator("#cmp-model-1 input")
    model.fill(canned_model)
    model.press("Enter")
    page.wait_for_function("(v) => document.querySelector('#cmp-model-1 input').value === v", arg=canned_model)
    set_number(page, "cmp-max-new-0", 16)
    run_all(page, "Print a long identifier.")
    page.wait_for_function("() => document.querySelector('#cmp-out-1 pre') !== null")
    assert "canned · remote" in page.inner_text("#cmp-label-1")
    g = page.evaluate(CODE_GEOMETRY)
    assert len(g["icons"]) == 2 and g["pre"], g  # the pane's copy icon and the code block's own
    text = page.inner_text("#cmp-out-1 pre").replace("\n", "")
    assert CODE_LINE in text, text  # the whole line is there to read
    assert g["pre"][2] <= g["pane"][2] + 1, ("the code block runs past its pane", g["pre"], g["pane"])
    scroll_width, client_width, _ = g["preScroll"]
    assert scroll_width <= client_width + 1, ("the long line does not wrap", g["preScroll"])
    assert not g["clipped"], g["clipped"]  # nothing in the pane cuts its text off unseen
    for left, top, right, bottom in g["icons"]:
        under = [r for r in g["lines"] if r[0] < right and r[2] > left and r[1] < bottom and r[3] > top]
        assert not under, ("text under a copy icon", (left, top, right, bottom), under)
    shot(page, "code-line", size, at="#cmp-pane-1")


# ---- 3 and 4. the tally and "both are bad" --------------------------------------------------------------------
def test_the_tally_headers_do_not_clash_with_variants_named_a_and_b(page, size):
    seed = 1000 + 10 * list(SIZES).index(size)
    blind_run(page, ("A", "B"), seed)
    page.click("#cmp-vote-0")
    page.wait_for_function("() => document.querySelector('#cmp-vote-note').innerText.includes('recorded')")
    keys = fingerprint_keys(page)
    winner = keys[0]  # the variant shown in pane 1
    page.locator("#cmp-tally-box").get_by_text("Raw tally").click()
    page.wait_for_function("(k) => document.querySelector('#cmp-tally')?.innerText.includes(k)", arg=keys[0])
    heads, rows = table(page, "cmp-tally")
    assert heads[:7] == ["first variant", "second variant", "first won", "second won", "ties", "both bad", "votes"]
    for head in heads:  # "variant A", "A wins": a header naming a letter reads as the variant of that name
        assert not re.search(r"\b[A-D]\b", head), head
    row = next(r for r in rows if set(r[:2]) == set(keys))
    first, second = row[:2]
    assert first < second  # the pair is listed in a fixed order, whatever the panes' order was
    won = {first: int(row[2]), second: int(row[3])}
    assert won[winner] == 1 and sum(won.values()) == 1 and row[4:7] == ["0", "0", "1"], row
    assert last_vote()["winner_key"] == winner
    shot(page, "tally", size, at="#cmp-tally")


def test_both_are_bad_is_recorded_and_rated_as_a_tie(page, size):
    seed = 2000 + 10 * list(SIZES).index(size)
    blind_run(page, (f"plain {uuid.uuid4().hex[:4]}", "terse"), seed)
    page.click("#cmp-vote-bad")
    page.wait_for_function("() => document.querySelector('#cmp-vote-note').innerText.includes('recorded')")
    assert "both are bad" in page.inner_text("#cmp-vote-note")
    keys = fingerprint_keys(page)
    for pane in (0, 1):
        assert "your pick" not in page.inner_text(f"#cmp-label-{pane}")
    vote = last_vote()  # the votes table of the run history
    assert vote["verdict"] == "bad" and vote["winner"] is None and vote["winner_key"] is None
    assert sorted(v["key"] for v in json.loads(vote["variants"])) == sorted(keys)
    page.wait_for_function("(k) => document.querySelector('#cmp-board-variants').innerText.includes(k)", arg=keys[0])
    heads, rows = table(page, "cmp-board-variants")
    shown = {r[1]: dict(zip(heads, r)) for r in rows}
    board = {e.name: e for e in leaderboard(VoteStore.open().votes(), "variant").rows}  # the ratings code's own
    for key in keys:
        row, entry = shown[key], board[key]
        assert (row["votes"], row["wins"], row["ties"], row["losses"], row["both bad"]) == ("1", "0", "0", "0", "1")
        assert int(row["rating"]) == round(entry.rating) and row["95% interval"] == f"{entry.low:.0f} – {entry.high:.0f}"
    assert shown[keys[0]]["rating"] == shown[keys[1]]["rating"]  # counted half a win each way: level
    page.locator("#cmp-tally-box").get_by_text("Raw tally").click()
    page.wait_for_function("(k) => document.querySelector('#cmp-tally')?.innerText.includes(k)", arg=keys[0])
    _, tally = table(page, "cmp-tally")
    row = next(r for r in tally if set(r[:2]) == set(keys))
    assert row[2:7] == ["0", "0", "0", "1", "1"], row
    shot(page, "both-bad", size, at="#cmp-board")


# ---- 5. glyphs -------------------------------------------------------------------------------------------------
# Every character of the tab's own text (model outputs left out: tiny-random's are noise) drawn in its element's
# font on a canvas, against a code point no font has (U+0378, unassigned): the same pixels are the missing-glyph box.
MISSING_GLYPHS = """() => {
  const tab = document.querySelector('#cmp-run').closest('[role=tabpanel]') || document.body;
  const skip = (e) => e.closest('[id^=cmp-out-], #cmp-diff, [id^=cmp-stats-], textarea');
  const byFont = new Map();
  const add = (text, el) => {
    const font = getComputedStyle(el).font;
    if (!byFont.has(font)) byFont.set(font, new Set());
    for (const ch of text) if (!/\\s/.test(ch) && ch.codePointAt(0) > 0x7e && !/[\\ufe0e\\ufe0f\\u200d]/.test(ch)) byFont.get(font).add(ch);
  };
  const walk = document.createTreeWalker(tab, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    const el = n.parentElement;
    if (el && !skip(el) && el.getClientRects().length) add(n.textContent, el);
  }
  for (const el of tab.querySelectorAll('*')) {  // CSS-drawn text: a ::before or ::after with content
    for (const pseudo of ['::before', '::after']) {
      const c = getComputedStyle(el, pseudo).content;
      if (c && c.startsWith('"')) add(JSON.parse(c), el);
    }
  }
  for (const input of tab.querySelectorAll('input[type=text], input:not([type])')) if (!skip(input)) add(input.value, input);
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = 64;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const draw = (ch, font) => {
    ctx.clearRect(0, 0, 64, 64); ctx.font = font.replace(/\\d+(\\.\\d+)?px/, '32px'); ctx.textBaseline = 'top';
    ctx.fillText(ch, 8, 8); return ctx.getImageData(0, 0, 64, 64).data.join(',');
  };
  const missing = [], seen = [];
  for (const [font, chars] of byFont) {
    const box = draw('\\u0378', font);
    for (const ch of chars) { seen.push(ch); if (draw(ch, font) === box) missing.push([ch, 'U+' + ch.codePointAt(0).toString(16), font]); }
  }
  return {missing, seen: [...new Set(seen)].join('')};
}"""


def test_no_glyph_the_tab_uses_is_drawn_as_a_missing_glyph_box(page, size):
    blind_run(page, ("简洁", "B"), 3000 + 10 * list(SIZES).index(size))  # blind labels, Chinese names ...
    page.click("#cmp-vote-tie")  # ... the revealed labels and the leaderboard ...
    page.wait_for_function("() => document.querySelector('#cmp-vote-note').innerText.includes('recorded')")
    page.fill("#cmp-input textarea", "")
    page.click("#cmp-run")  # ... and an error notice, with its warning sign
    page.wait_for_function("() => document.querySelector('#cmp-status').innerText.includes('input is empty')")
    page.locator("#cmp-tally-box").get_by_text("Raw tally").click()
    page.get_by_text("Variants on a benchmark").click()
    page.wait_for_selector("#cmp-bench-table", state="visible")
    found = page.evaluate(MISSING_GLYPHS)
    assert not found["missing"], found["missing"]
    assert "·" in found["seen"] and "简" in found["seen"] and "⚠" in found["seen"], found["seen"]  # it looked
    shot(page, "glyphs", size, full=True)


def test_the_glyph_check_sees_a_missing_glyph(page):
    """The check above finds a box where there is one: a trophy (no emoji font here) put into the tab's text."""
    page.evaluate("() => { document.querySelector('#cmp-label-0').insertAdjacentText('beforeend', ' \\u{1F3C6}'); }")
    missing = page.evaluate(MISSING_GLYPHS)["missing"]
    assert [m[0] for m in missing] == ["🏆"], missing


# ---- 6. in view, and tables that scroll sideways ---------------------------------------------------------------
# Each Dataframe's scrolling box: whether it fits, else whether it scrolls sideways and its right edge stays on screen.
TABLES = """() => [...document.querySelectorAll('#cmp-board-variants, #cmp-board-models, #cmp-tally, #cmp-bench-table')]
  .filter(t => t.getClientRects().length).map(t => {
    const table = t.querySelector('table');
    let wrap = table.parentElement;
    while (wrap && wrap !== t && wrap.scrollWidth <= wrap.clientWidth + 1) wrap = wrap.parentElement;
    const fits = !wrap || wrap === t && t.scrollWidth <= t.clientWidth + 1;
    const s = wrap ? getComputedStyle(wrap) : null;
    const before = wrap ? wrap.scrollLeft : 0;
    if (wrap) wrap.scrollLeft = wrap.scrollWidth;
    const moved = wrap ? wrap.scrollLeft > before : false;
    const last = [...table.querySelectorAll('thead th')].pop().getBoundingClientRect();
    if (wrap) wrap.scrollLeft = before;
    return {id: t.id, fits, scrolls: moved && ['auto', 'scroll'].includes(s.overflowX),
            right: t.getBoundingClientRect().right, lastRight: last.right};
  })"""


def test_outputs_come_into_view_after_run_all_and_tables_scroll_sideways(page, size):
    set_number(page, "cmp-max-new-0", 16)
    set_number(page, "cmp-max-new-1", 16)
    page.fill("#cmp-input textarea", "Hello")
    page.locator("#cmp-run").scroll_into_view_if_needed()
    page.click("#cmp-run")
    # As the run starts, not after: the panes come into view while they stream.
    page.wait_for_function("""() => { const r = document.querySelector('#cmp-pane-0').getBoundingClientRect();
                                      return r.top >= 0 && r.top < window.innerHeight * 0.5; }""", timeout=10_000)
    page.wait_for_function(RUN_DONE, timeout=120_000)
    shot(page, "in-view", size)
    page.get_by_text("Variants on a benchmark").click()
    page.locator("#cmp-tally-box").get_by_text("Raw tally").click()
    page.wait_for_selector("#cmp-bench-table table")
    assert page.evaluate(NO_PAGE_OVERFLOW), "the page is wider than the screen"
    tables = page.evaluate(TABLES)
    assert {t["id"] for t in tables} == {"cmp-board-variants", "cmp-board-models", "cmp-tally", "cmp-bench-table"}
    width = SIZES[size]["width"]
    for t in tables:
        assert t["fits"] or t["scrolls"], t  # cut off: neither fits nor scrolls
        assert t["right"] <= width + 1, t
        if t["fits"]:
            assert t["lastRight"] <= width + 1, t
    shot(page, "tables", size, at="#cmp-board")


# ---- 7. errors -------------------------------------------------------------------------------------------------
def status_says(page, words: str) -> str:
    page.wait_for_function("(w) => document.querySelector('#cmp-status').innerText.includes(w)", arg=words)
    return page.inner_text("#cmp-status")


def in_view(page, selector: str) -> bool:
    """Whether `selector` is on screen, or comes on screen within a few seconds (the page scrolls smoothly)."""
    try:
        page.wait_for_function("""(s) => { const r = document.querySelector(s).getBoundingClientRect();
                                           return r.bottom > 0 && r.top < window.innerHeight; }""", arg=selector,
                               timeout=5_000)
        return True
    except PlaywrightTimeout:
        return False


def test_errors_sit_beside_their_cause_and_never_lock_a_pane(page, size):
    page.click("#cmp-export-json")  # nothing to export, diff or load yet: a sentence beside each button
    page.wait_for_function("() => document.querySelector('#cmp-export-note').innerText.includes('Run a comparison')")
    page.click("#cmp-diff-btn")
    page.wait_for_function("() => document.querySelector('#cmp-diff').innerText.includes('Run a comparison first')")
    page.click("#cmp-load")
    page.wait_for_function("() => document.querySelector('#cmp-set-note').innerText.includes('Pick a variant set')")
    for pane in (0, 1):
        set_number(page, f"cmp-max-new-{pane}", 16)
        sampling(page, pane)
        set_number(page, f"cmp-seed-{pane}", 7 + pane)
    run_all(page, "Count to three.")
    before = [page.inner_text(f"#cmp-out-{p}") for p in (0, 1)]
    stats = [page.inner_text(f"#cmp-stats-{p}") for p in (0, 1)]
    assert all(before) and "seed 7 " in stats[0] + " "

    def refused(words: str) -> str:
        page.click("#cmp-run")
        said = status_says(page, words)
        assert said.startswith("⚠"), said
        assert in_view(page, "#cmp-status"), "the sentence is off screen"
        assert [page.inner_text(f"#cmp-out-{p}") for p in (0, 1)] == before  # the panes as they were
        assert [page.inner_text(f"#cmp-stats-{p}") for p in (0, 1)] == stats
        assert problems(page) == {"overlays": 0, "toasts": []}, problems(page)
        assert page.locator("#cmp-run").is_enabled()
        return said

    page.fill("#cmp-seed-0 input[type=number]", "99999999999999999999")
    page.press("#cmp-seed-0 input[type=number]", "Enter")
    said = refused("seed must be a whole number")
    assert "Variant 'A'" in said and "between 0 and 4,294,967,295" in said, said
    shot(page, "error-seed", size, at="#cmp-status")
    set_number(page, "cmp-seed-0", 7)
    set_number(page, "cmp-max-new-1", 8192)
    said = refused("context")
    assert "Variant 'B'" in said and "8,192" in said and "tiny-random's context of 4,096 tokens" in said, said
    room = int(re.search(r"lower its max new tokens to ([\d,]+) or less", said).group(1).replace(",", ""))
    prompt = int(re.search(r"prompt ([\d,]+) tok", stats[1]).group(1).replace(",", ""))
    assert room == (4096 - prompt) // 16 * 16  # the most that fits, in the slider's steps
    set_number(page, "cmp-max-new-1", 16)
    page.fill("#cmp-template-0 textarea", "no slot here")
    said = refused("without an {input} slot")
    page.fill("#cmp-template-0 textarea", "{input}")
    page.fill("#cmp-input textarea", "")
    refused("The input is empty")
    shot(page, "error-input", size, at="#cmp-status")
    # Fixed, the same run goes: nothing was left locked or changed.
    run_all(page, "Count to three.")
    assert not page.inner_text("#cmp-status").startswith("⚠")
    assert [page.inner_text(f"#cmp-out-{p}") for p in (0, 1)] == before  # seeded: the same replies again
    assert problems(page) == {"overlays": 0, "toasts": []}


# ---- the seed-box race ------------------------------------------------------------------------------------------
# Types a value into the box SELECTOR the first frame it is on screen, then records its value each frame for 1.5 s.
TYPE_AS_IT_APPEARS = """(selector) => new Promise((done) => {
  const t0 = performance.now(), seen = [];
  let typed = false;
  const step = () => {
    const box = document.querySelector(selector);
    if (box && box.getClientRects().length) {
      if (!typed) { box.focus(); box.value = '4242'; box.dispatchEvent(new Event('input', {bubbles: true})); typed = true; }
      if (seen[seen.length - 1] !== box.value) seen.push(box.value);
    }
    if (performance.now() - t0 > 1500) return done(seen);
    requestAnimationFrame(step);
  };
  step();
})"""


def test_a_seed_typed_as_the_sampling_panel_opens_stays(page, size):
    seen = page.evaluate(f"""() => {{ document.querySelector('#cmp-sampling-btn-0').click();
                                      return ({TYPE_AS_IT_APPEARS})('#cmp-seed-0 input[type=number]'); }}""")
    assert seen == ["4242"], f"the box showed {seen}: its starting value came back over the typed seed"
    page.press("#cmp-seed-0 input[type=number]", "Enter")
    set_number(page, "cmp-max-new-0", 16)
    set_number(page, "cmp-max-new-1", 16)
    run_all(page, "Hello")
    assert "seed 4242 " in page.inner_text("#cmp-stats-0") + " "
    page.click("#cmp-sampling-btn-0")  # the button hides the panel again
    page.wait_for_selector("#cmp-seed-0 input[type=number]", state="hidden")
    assert page.get_attribute("#cmp-sampling-btn-0", "aria-expanded") == "false"


# ---- the README's screenshots ------------------------------------------------------------------------------------
def test_readme_screenshots(page, size):
    """spaces/screenshot-compare.png and screenshot-compare-phone.png are copies of these, looked at first."""
    page.locator("#cmp-panes").get_by_text("3", exact=True).click()
    page.wait_for_selector("#cmp-variant-2", state="visible")
    # Seeds whose replies hold no character that the fonts here lack (tiny-random draws from the whole vocabulary).
    for pane, (new, seed) in enumerate(((40, 8), (32, 1), (48, 5))):
        set_number(page, f"cmp-max-new-{pane}", new)
        sampling(page, pane)
        set_number(page, f"cmp-seed-{pane}", seed)
        page.click(f"#cmp-sampling-btn-{pane}")  # closed again, as a visitor finds it
    page.locator("#cmp-blind input").check()
    run_all(page, "用一句话介绍长城。Describe the Great Wall in one sentence.")
    page.click("#cmp-vote-1")
    page.wait_for_function("() => document.querySelector('#cmp-vote-note').innerText.includes('recorded')")
    page.wait_for_function("() => (document.querySelector('#cmp-board-variants [data-testid=\"cell-0-1\"]') || {})"
                           ".innerText?.includes('#')")
    if size == "desktop":
        page.screenshot(path=str(ARTIFACTS / "readme-compare-desktop.png"), full_page=True)
    else:
        page.evaluate("() => document.querySelector('#cmp-status').scrollIntoView({block: 'start'})")
        time.sleep(0.5)
        page.screenshot(path=str(ARTIFACTS / "readme-compare-phone.png"))
