"""The Compare tab: two to four variants (system prompt, template, sampling, and optionally a model and
quantization of their own) answer one input together in one batched generation per model, every pane streaming;
a word diff between two outputs; blind mode with votes kept in the run history (`runs/lab.db`, table `votes`),
rated into leaderboards of variants and of models (lab/ui/compare_board.py) over the raw tally per pair; variant
sets saved to and loaded from prompts/compare/*.yaml; JSON and Markdown exports; and the variants run over a
seeded slice of a benchmark, one saved evaluation run each, accuracy side by side.

Programs reach it by api_name (gradio_client): `/compare` (input, variants as a JSON list of objects ->
one output per variant, streamed as partial lists), `/compare_plan` (variants -> what their models take and
whether they fit together), `/compare_free` (frees the models Compare holds beside the page's),
`/compare_board` (the leaderboards and the tally) and `/compare_bench` (variants, benchmark, limit, seed, max
new tokens -> one row per variant with its run id and accuracy).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import random
import tempfile
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from lab.chat.presets import system_presets
from lab.compare import MAX_PANES, Comparison, check_fits, check_input, parse_variants, run_variants
from lab.compare.bench import BENCH_HEADERS, bench_table, bench_variants
from lab.compare.diff import word_diff_html
from lab.compare.sets import list_sets, load_set, save_set
from lab.compare.votes import VoteStore
from lab.errors import LabError
from lab.eval.plan import DEFAULT_SEED
from lab.eval.spec import benchmarks
from lab.models.manager import ModelManager
from lab.space import gpu
from lab.ui import compare_panes as cp
from lab.ui.compare_board import build_board, frames
from lab.ui.compare_models import plan_for, run_planned, spans_models
from lab.ui.common import (STREAM_INTERVAL_S, SessionCancels, errors_inline, form_number, in_background, notice,
                           whole_number)

BENCH_UPDATE_S = 0.25
# Long code lines wrap inside a pane (anywhere: a long name or string has no space to break at) rather than run on
# under its copy icon; the pane's icon gets a strip of its own, and a code block's own icon a line above the code.
# A variant's Sampling panel is shown and hidden in the browser alone (compare_panes says why it is no accordion).
STYLE = """<style>
[id^="cmp-out-"] pre, [id^="cmp-out-"] pre * { white-space: pre-wrap !important; overflow-wrap: anywhere !important; }
[id^="cmp-out-"] pre { padding-top: 2.2em !important; }
[id^="cmp-out-"] .prose { padding-right: 2.2em; }
.cmp-sampling:not([data-open]) { display: none !important; }
.cmp-sampling-btn { justify-content: space-between !important; font-weight: normal !important; }
.cmp-sampling-btn::after { content: "\\25BC"; font-size: 0.7em; transform: rotate(90deg); transition: transform .15s; }
.cmp-sampling-btn[aria-expanded="true"]::after { transform: none; }
#cmp-cost, #cmp-cost * { font-size: 0.8rem !important; }
#cmp-load, #cmp-save { align-self: flex-end; flex-grow: 0 !important; margin-bottom: 4px; white-space: nowrap; }
@media (max-width: 768px) {  /* Gradio puts the two in one form box, which does not wrap by itself */
  .form:has(> #cmp-panes) { flex-wrap: wrap !important; }
  #cmp-panes, #cmp-blind { flex: 1 1 100% !important; }
}
</style>"""
TOGGLE_JS = """if (!window.cmpSamplingToggle) {
  window.cmpSamplingToggle = true;
  document.addEventListener('click', (e) => {
    const button = e.target.closest && e.target.closest('.cmp-sampling-btn');
    const panel = button && document.getElementById(button.id.replace('-btn-', '-'));
    if (!panel) return;
    const open = !panel.hasAttribute('data-open');
    panel.toggleAttribute('data-open', open);
    button.setAttribute('aria-expanded', String(open));
  });
}"""
# The panes start below the variants (on a phone ~2,500 px down, at 1440×900 past the fold): as a run starts, bring
# the status line and the panes under it into view, unless they are in view already. In the run event's own js
# (which hands its inputs on unchanged): a js-only event on the same click ran a second or two later.
SCROLL_JS = """(...inputs) => { const el = document.querySelector('#cmp-status');
  const top = el ? el.getBoundingClientRect().top : 0;
  if (el && (top < 0 || top > window.innerHeight * 0.5)) el.scrollIntoView({behavior: 'smooth', block: 'start'});
  return inputs; }"""


def build_compare_tab(manager: ModelManager, tab: gr.Tab | None = None) -> None:
    presets = system_presets()
    cancels = SessionCancels()
    votes = functools.cache(VoteStore.open)  # on first use: a bad LAB_RUNS_DIR is a sentence on the page, not a crash

    # ---- layout -------------------------------------------------------------------------
    state = gr.State(None)  # the last Comparison shown
    gr.HTML("", head=STYLE, js_on_load=TOGGLE_JS, padding=False, elem_id="cmp-style")
    gr.Markdown("Every variant answers the same input, together in one batched generation per model. A variant may "
                "name a model and quantization of its own; blind mode hides and shuffles the labels until you vote.")
    with gr.Row():
        user_input = gr.Textbox(label="Input (every variant answers it)", lines=3, max_lines=16, scale=6,
                                elem_id="cmp-input")
        with gr.Column(scale=1, min_width=160):
            run_btn = gr.Button("Run all", variant="primary", elem_id="cmp-run")
            stop_btn = gr.Button("Stop", variant="stop", elem_id="cmp-stop")
            cost = gr.Markdown("", elem_id="cmp-cost")  # what Run all will cost, from each variant's max new tokens
    with gr.Row(equal_height=True):  # two rows, each of which a phone can wrap once, not six boxes in one
        panes = gr.Radio([2, 3, 4], value=2, label="Panes", elem_id="cmp-panes", scale=1, min_width=200)
        blind = gr.Checkbox(False, label="Blind mode: labels hidden and shuffled until you vote", scale=1,
                            min_width=200, elem_id="cmp-blind")
    with gr.Row(equal_height=True):
        sets = gr.Dropdown(list_sets(), value=None, label="Variant set (prompts/compare)", scale=3, min_width=190,
                           elem_id="cmp-set")
        load_btn = gr.Button("Load set", scale=1, min_width=100, elem_id="cmp-load")
        set_name = gr.Textbox(label="Save the variants as", max_lines=1, scale=3, min_width=190, elem_id="cmp-set-name")
        save_btn = gr.Button("Save set", scale=1, min_width=100, elem_id="cmp-save")
    set_note = gr.Markdown("", elem_id="cmp-set-note")
    editors = cp.build_editors(presets, 2)
    status = gr.Markdown("", elem_id="cmp-status")
    outs = cp.build_outputs(2)
    with gr.Row(visible=False, elem_id="cmp-vote-row") as vote_row:
        vote_btns = [gr.Button(f"Response {i + 1} is better", visible=i < 2, elem_id=f"cmp-vote-{i}")
                     for i in range(MAX_PANES)]
        tie_btn = gr.Button("Tie", elem_id="cmp-vote-tie")
        bad_btn = gr.Button("Both are bad", elem_id="cmp-vote-bad")
    vote_note = gr.Markdown("", elem_id="cmp-vote-note")  # the vote recorded, or why it was not
    with gr.Row(equal_height=True):
        plan_btn = gr.Button("What fits in memory?", size="sm", elem_id="cmp-plan")
        free_btn = gr.Button("Free Compare's other models", size="sm", elem_id="cmp-free")
    plan_note = gr.Markdown("", elem_id="cmp-plan-note")
    board = build_board(votes)
    with gr.Accordion("Word diff of two outputs", open=True):
        with gr.Row(equal_height=True):
            diff_a = gr.Dropdown(list(range(1, MAX_PANES + 1)), value=1, label="From pane", elem_id="cmp-diff-a")
            diff_b = gr.Dropdown(list(range(1, MAX_PANES + 1)), value=2, label="To pane", elem_id="cmp-diff-b")
            diff_btn = gr.Button("Diff", scale=0, min_width=100, elem_id="cmp-diff-btn")
        diff_view = gr.HTML("", elem_id="cmp-diff")
    with gr.Row():
        json_btn = gr.Button("Export JSON", size="sm", elem_id="cmp-export-json")
        md_btn = gr.Button("Export Markdown", size="sm", elem_id="cmp-export-md")
    export_note = gr.Markdown("", elem_id="cmp-export-note")
    export_file = gr.File(label="Comparison export", visible=False, elem_id="cmp-export-file")
    with gr.Accordion("Variants on a benchmark (greedy; each variant's system prompt and template)", open=False):
        with gr.Row(equal_height=True):
            bench = gr.Dropdown(benchmarks(), value=benchmarks()[0], label="Benchmark",
                                info="multiple choice in gen mode, code in instruct mode", elem_id="cmp-bench")
            bench_limit = whole_number(20, precision=0, minimum=1, label="Items (seeded sample)",
                                    elem_id="cmp-bench-limit")
            bench_seed = whole_number(DEFAULT_SEED, precision=0, label="Seed", elem_id="cmp-bench-seed")
            bench_new = whole_number(256, precision=0, minimum=1, label="Max new tokens", elem_id="cmp-bench-max-new")
            bench_btn = gr.Button("Run on the benchmark", scale=0, min_width=180, elem_id="cmp-bench-run")
        bench_note = gr.Markdown("", elem_id="cmp-bench-progress")
        bench_df = gr.Dataframe(headers=BENCH_HEADERS, value=[], interactive=False, elem_id="cmp-bench-table")
    form = [c for e in editors for c in e.fields]
    cost.value = cp.cost_line(2, [c.value for c in form])
    pane_outputs = [o.label for o in outs] + [o.text for o in outs] + [o.stats for o in outs]

    # ---- running ------------------------------------------------------------------------
    def shown(comparison: Comparison, texts: list[str], revealed: bool, stats_hidden: bool) -> list:
        order = cp.order_of(len(texts), comparison)
        return (cp.labels(comparison, revealed, comparison.models is not None) + cp.pad([texts[i] for i in order])
                + cp.stats_lines(comparison, stats_hidden))

    def plan_or_model(variants: list):
        """The memory plan when a variant names a model, else the page's model; a sentence when neither can be."""
        return (plan_for(manager, variants), None) if spans_models(variants) else (None, manager.model)

    def streams(text: str, variants: list, plan, model, event):
        """(panes, what is happening, each variant's model) as the variants answer: one batched generation on the
        page's model, or, when a variant names a model, each model's batch in the memory plan's order."""
        if plan is None:
            return ((panes, None, [model.info] * len(variants))
                    for panes in run_variants(model, text, variants, event))
        return run_planned(manager, text, variants, plan, event)

    def as_before(comparison: Comparison | None) -> list:
        """The panes, vote row and state as the comparison `comparison` left them (a run refused half-way)."""
        if comparison is None:
            return [*cp.blank_labels(), *cp.pad([]), *cp.pad([]), gr.Row(visible=False), gr.skip(), None]
        waiting = comparison.order is not None and not comparison.voted
        return [*shown(comparison, comparison.outputs, comparison.voted, waiting), gr.Row(visible=waiting),
                gr.skip(), comparison]

    @gpu(duration=120)
    def run(request: gr.Request, before: Comparison | None, text: str, n: int, blind_on: bool, *values):
        """Every pane's variant answers `text` in one batched generation per model; the panes stream together.
        A problem is one sentence on the status line: before decoding the panes stay as they were; half-way they
        are put back as the last comparison left them."""
        try:
            variants = cp.variants_from_form(n, values)
            check_input(text)
            plan, model = plan_or_model(variants)
            if model is not None:
                check_fits(model, text, variants)
        except LabError as e:
            yield (*[gr.skip()] * (len(run_outputs) - 1), notice(str(e)))
            return
        k, spans = len(variants), plan is not None
        order = random.sample(range(k), k) if blind_on else None
        page_model = manager.model.info.to_dict() if manager.loaded else None
        comparison = Comparison(text, variants, [""] * k, [None] * k, page_model, order=order)
        event = cancels.start(request.session_hash)
        stream = streams(text, variants, plan, model, event)
        longest = max(v.max_new_tokens for v in variants)
        start = (f"{plan.placement.note} " if spans else "") + (
            f"Generating {k} variants{'' if spans else ' in one batch'}, up to {longest:,} new tokens "
            f"{'each' if len({v.max_new_tokens for v in variants}) == 1 else 'for the longest'} "
            "(the longest reply sets the time)…")
        yield (*cp.labels(comparison, False, spans), *cp.pad([""] * k), *cp.pad(["*generating…*"] * k),
               gr.Row(visible=False), "", None, start)
        t0, last, panes_now, infos, said = time.monotonic(), 0.0, None, None, None
        try:
            with contextlib.closing(stream):
                for panes_now, what, infos in stream:
                    if time.monotonic() - last > STREAM_INTERVAL_S or (what and what != said):
                        last = time.monotonic()
                        texts = [p.text for p in panes_now]
                        note = f"{plan.placement.note} {what}" if what and what != said else gr.skip()
                        said = what or said
                        yield (*[gr.skip()] * MAX_PANES, *cp.pad([texts[i] for i in cp.order_of(k, comparison)]),
                               *[gr.skip()] * (MAX_PANES + 3), note)
        except LabError as e:
            yield (*as_before(before), notice(str(e)))
            return
        finally:
            cancels.finish(request.session_hash, event)
        comparison = Comparison.from_panes(text, variants, panes_now, manager.model.info if manager.loaded else None,
                                           order, models=infos if spans else None)
        done = (f"{k} variants on {len(plan.placement.steps)} models, one batch per model, " if spans
                else f"{k} variants, one batched generation, ") + cp.took(comparison, time.monotonic() - t0)
        if spans:
            done += f" {plan.placement.note}"
        ask = "Which response is better? Vote to reveal the labels." if order is not None else ""  # by the buttons
        yield (*shown(comparison, comparison.outputs, False, order is not None), gr.Row(visible=order is not None),
               ask, comparison, done)

    def stop(request: gr.Request) -> None:
        cancels.stop(request.session_hash)

    # The page's handlers below answer a problem in a note of their own (errors_inline, at the events).
    def vote(comparison: Comparison | None, pane: int | str | None):
        """pane: the pane voted for, None for a tie, "bad" for both are bad."""
        if comparison is None or comparison.order is None:
            raise LabError("Run a comparison in blind mode first, then vote.")
        if comparison.voted:
            raise LabError("This comparison has its vote; run it again to vote again.")
        if isinstance(pane, int) and pane >= len(comparison.order):
            raise LabError(f"There is no response {pane + 1} in this comparison.")
        voted = dataclasses.replace(comparison, vote=comparison.order[pane] if isinstance(pane, int) else None,
                                    bad=pane == "bad", voted=True)
        vote_id = votes().record(voted)  # a vote that could not be kept leaves the comparison open to vote on
        comparison = voted
        note = f"Vote {vote_id} recorded: {comparison.verdict}. The labels are revealed above."
        return (*cp.labels(comparison, True, comparison.models is not None), *cp.stats_lines(comparison, False),
                gr.Row(visible=False), note, comparison, *frames(votes))

    def diff(comparison: Comparison | None, a, b) -> str:
        if comparison is None:
            raise LabError("Run a comparison first, then diff two of its outputs.")
        k = len(comparison.variants)
        a, b = int(a or 1), int(b or 2)
        if not (1 <= a <= k and 1 <= b <= k):
            raise LabError(f"Pick two panes between 1 and {k}.")
        order = cp.order_of(k, comparison)
        names = cp.plain_labels(comparison, comparison.voted)
        return word_diff_html(comparison.outputs[order[a - 1]], comparison.outputs[order[b - 1]],
                              names[a - 1], names[b - 1])

    def export(comparison: Comparison | None, fmt: str):
        if comparison is None:
            raise LabError("Run a comparison first, then export it.")
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(tempfile.mkdtemp(prefix="qwen-lab-")) / f"qwen-lab-compare-{stamp}.{fmt}"
        path.write_text(comparison.to_json() if fmt == "json" else comparison.to_markdown(), encoding="utf-8")
        return gr.File(value=str(path), visible=True), ""

    def save(name: str, n: int, *values):
        path = save_set(name, cp.variants_from_form(n, values))
        return f"Saved to `{path}`.", gr.Dropdown(choices=list_sets(), value=path.stem)

    def load(name: str | None):
        if not name:
            raise LabError("Pick a variant set to load first.")
        description, variants = load_set(name)
        return (len(variants), *cp.form_values(variants, presets), f"Loaded **{name}**: {description}")

    def show_panes(n: int):
        n = int(n)
        return (*cp.visibility(n), *cp.visibility(n), *[gr.Button(visible=i < n) for i in range(MAX_PANES)])

    def plan_text(variants: list) -> str:
        if not spans_models(variants):
            return "No variant names a model: they all run on the page's model, in one batched generation."
        return plan_for(manager, variants).placement.note

    def plan_page(n: int, *values) -> str:
        return plan_text(cp.variants_from_form(n, values))

    def free() -> str:
        """Free the models Compare holds beside the page's model (their memory goes back)."""
        held = [k for k in manager.held() if k != manager.main_key()]
        manager.release_extras()
        return f"Freed {', '.join(held)}." if held else "Compare holds no other model; nothing to free."

    # ---- variants on a benchmark ----------------------------------------------------------
    def one_model(variants: list) -> list:
        if spans_models(variants):
            raise LabError("Variants on a benchmark run on the page's model; set every variant's model to "
                           "'as loaded', or measure models and quantizations on a benchmark with the Evaluate "
                           "tab's Quantization report.")
        return variants

    def bench_watch(variants, benchmark: str, limit, seed, max_new, key: str):
        """Run the variants on the benchmark in the background; yield progress lines, then (line, table rows)."""
        model = manager.model
        limit = form_number("limit", limit, "The number of items") if limit else 0
        seed = None if seed is None else form_number("seed", seed, "The seed")
        max_new = form_number("max_new_tokens", max_new, "Max new tokens") if max_new else None

        def job(on_progress, cancel):
            return bench_variants(model, variants, benchmark, limit, seed, max_new,
                                  on_progress=lambda i, p: on_progress((i, p)), cancel=cancel)

        shown_at = 0.0
        with in_background(job, cancels, key, name="lab-compare-bench") as work:
            for i, p in work:
                if time.monotonic() - shown_at >= BENCH_UPDATE_S:
                    shown_at = time.monotonic()
                    yield f"Variant {i + 1}/{len(variants)} **{variants[i].name}**: {p}", None
        rows = work.result
        note = (f"{len(rows)} runs on {benchmark}, {int(limit)} items each; they are in the Evaluate tab's history: "
                + ", ".join(f"`{r.run_id}`" for r in rows))
        yield note, rows

    @gpu(duration=600)
    @errors_inline(2, 0)
    def bench_page(request: gr.Request, benchmark: str, limit, seed, max_new, n: int, *values):
        variants = one_model(cp.variants_from_form(n, values))
        yield "Starting…", gr.skip()
        for note, rows in bench_watch(variants, benchmark, limit, seed, max_new, request.session_hash):
            yield note, gr.skip() if rows is None else pd.DataFrame(bench_table(rows), columns=BENCH_HEADERS)

    # ---- events -------------------------------------------------------------------------
    run_outputs = [*pane_outputs, vote_row, vote_note, state, status]
    for trigger in (run_btn.click, user_input.submit):
        trigger(run, [state, user_input, panes, blind, *form], run_outputs, js=SCROLL_JS, api_visibility="private",
                concurrency_id="model")
    stop_btn.click(stop, None, None, queue=False, api_visibility="private")
    vote_outputs = [*[o.label for o in outs], *[o.stats for o in outs], vote_row, vote_note, state, *board.outputs]
    gr.on([e.fields[cp.FIELDS.index(k)].change for e in editors for k in ("max_new_tokens", "model", "quant")]
          + [panes.change], lambda n, *values: cp.cost_line(n, values), [panes, *form], cost, queue=False,
          show_progress="hidden", trigger_mode="always_last", api_visibility="private")

    def voter(pane: int | str | None):
        return errors_inline(len(vote_outputs), vote_outputs.index(vote_note))(lambda c: vote(c, pane))

    for i, btn in enumerate(vote_btns):
        btn.click(voter(i), state, vote_outputs, api_visibility="private")
    tie_btn.click(voter(None), state, vote_outputs, api_visibility="private")
    bad_btn.click(voter("bad"), state, vote_outputs, api_visibility="private")
    plan_btn.click(errors_inline(1, 0)(plan_page), [panes, *form], plan_note, api_visibility="private")
    free_btn.click(free, None, plan_note, api_name="compare_free", concurrency_id="model")
    diff_btn.click(errors_inline(1, 0)(diff), [state, diff_a, diff_b], diff_view, api_visibility="private")
    for btn, fmt in ((json_btn, "json"), (md_btn, "md")):
        btn.click(errors_inline(2, 1)(functools.partial(export, fmt=fmt)), state, [export_file, export_note],
                  api_visibility="private")
    save_btn.click(errors_inline(2, 0)(save), [set_name, panes, *form], [set_note, sets], api_visibility="private")
    load_btn.click(errors_inline(2 + len(form), 1 + len(form))(load), sets, [panes, *form, set_note],
                   api_visibility="private")
    panes.change(show_panes, panes, [*[e.column for e in editors], *[o.column for o in outs], *vote_btns],
                 api_visibility="private")
    for e in editors:
        e.preset.input(lambda name: presets.get(name, gr.skip()), e.preset, e.system, api_visibility="private")
        e.system.input(lambda: cp.CUSTOM, None, e.preset, api_visibility="private")
    bench_btn.click(bench_page, [bench, bench_limit, bench_seed, bench_new, panes, *form], [bench_note, bench_df],
                    api_visibility="private", concurrency_id="model")
    if tab is not None:  # opening the tab shows the votes and sets made meanwhile (other visitors, other tabs)
        tab.select(lambda: (*frames(votes), gr.Dropdown(choices=list_sets())), None, [*board.outputs, sets],
                   api_visibility="private")

    # ---- for programs -----------------------------------------------------------------------
    def compare(input: str, variants: str) -> list[str]:
        """Every variant answers `input` in one batched generation; streams the outputs so far, one per variant.

        variants: a JSON list of 2 to 4 objects, each with optional "name", "system" (text, or a preset name
        of prompts/system.yaml), "template" (with an {input} slot; default "{input}"), "temperature",
        "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed", and "model" and "quant" (a model of its
        own and its quantization; left out: the page's model)."""
        try:
            parsed = parse_variants(variants)
            check_input(input)
            stream = streams(input, parsed, *plan_or_model(parsed), None)
        except LabError as e:
            raise gr.Error(str(e)) from None
        last, texts = 0.0, [""] * len(parsed)
        try:
            with contextlib.closing(stream):
                for panes_now, _, _ in stream:
                    texts = [p.text for p in panes_now]
                    if time.monotonic() - last > STREAM_INTERVAL_S:
                        last = time.monotonic()
                        yield texts
        except LabError as e:
            raise gr.Error(str(e)) from None
        yield texts

    gr.api(gpu(duration=120)(compare), api_name="compare", concurrency_id="model")

    def compare_plan(variants: str) -> str:
        """What the variants' models would take and whether they fit in memory together (nothing is loaded)."""
        try:
            return plan_text(parse_variants(variants))
        except LabError as e:
            raise gr.Error(str(e)) from None

    gr.api(compare_plan, api_name="compare_plan")

    def compare_board() -> dict:
        """The leaderboards from blind votes (variants, and models as model · quantization) and the pair tally."""
        note, by_variant, by_model, tally = frames(votes)
        return {"note": note, "variants": by_variant.to_dict("records"), "models": by_model.to_dict("records"),
                "tally": tally.to_dict("records")}

    gr.api(compare_board, api_name="compare_board")

    def compare_bench(variants: str, benchmark: str | None = None, limit: int = 20, seed: int = DEFAULT_SEED,
                      max_new_tokens: int = 256) -> list[dict]:
        """Each variant's system prompt and template over the same seeded `limit` items of the benchmark (None:
        the first listed; multiple choice in gen mode, code in instruct mode), greedy: one saved run per variant.
        Returns one row per variant: variant, run_id, status, accuracy (code: pass@1), correct, items."""
        benchmark = benchmark or benchmarks()[0]
        try:
            parsed = one_model(parse_variants(variants))
        except LabError as e:
            raise gr.Error(str(e)) from None
        rows = []
        try:
            for _, rows in bench_watch(parsed, benchmark, limit, seed, max_new_tokens, f"api-{id(parsed)}"):
                pass
        except LabError as e:
            raise gr.Error(str(e)) from None
        return [{"variant": r[0], "accuracy": r[1], "correct": r[2], "items": r[3], "status": r[5], "run_id": r[6]}
                for r in bench_table(rows or [])]

    gr.api(gpu(duration=600)(compare_bench), api_name="compare_bench", concurrency_id="model")
