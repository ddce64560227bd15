"""The Compare tab: two to four variants (system prompt, template, sampling) answer one input together
in one batched generation, every pane streaming; a word diff between two outputs; blind mode with votes
kept in the run history (`runs/lab.db`, table `votes`) and a tally per pair of variants; variant sets
saved to and loaded from prompts/compare/*.yaml; JSON and Markdown exports; and the variants run over a
seeded slice of a benchmark, one saved evaluation run each, accuracy side by side.

Programs reach it by api_name (gradio_client): `/compare` (input, variants as a JSON list of objects ->
one output per variant, streamed as partial lists) and `/compare_bench` (variants, benchmark, limit,
seed, max new tokens -> one row per variant with its run id and accuracy).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import random
import tempfile
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from lab.chat.presets import system_presets
from lab.compare import MAX_PANES, Comparison, check_input, parse_variants, run_variants
from lab.compare.bench import BENCH_HEADERS, bench_table, bench_variants
from lab.compare.diff import word_diff_html
from lab.compare.sets import list_sets, load_set, save_set
from lab.compare.votes import TALLY_HEADERS, VoteStore
from lab.errors import LabError
from lab.eval.plan import DEFAULT_SEED
from lab.eval.spec import benchmarks
from lab.models.manager import ModelManager
from lab.space import gpu
from lab.ui import compare_panes as cp
from lab.ui.common import STREAM_INTERVAL_S, SessionCancels, whole_number, form_number, in_background

BENCH_UPDATE_S = 0.25


def build_compare_tab(manager: ModelManager, tab: gr.Tab | None = None) -> None:
    presets = system_presets()
    cancels = SessionCancels()
    votes = functools.cache(VoteStore.open)  # on first use: a bad LAB_RUNS_DIR is a sentence on the page, not a crash

    def tally_frame() -> pd.DataFrame:
        try:
            rows = [t.row() for t in votes().tally()]
        except LabError:
            rows = []
        return pd.DataFrame(rows, columns=TALLY_HEADERS)

    # ---- layout -------------------------------------------------------------------------
    state = gr.State(None)  # the last Comparison shown
    gr.Markdown("Every variant answers the same input, together in one batched generation. Blind mode hides "
                "and shuffles the labels until you vote.")
    with gr.Row():
        user_input = gr.Textbox(label="Input (every variant answers it)", lines=3, max_lines=16, scale=6,
                                elem_id="cmp-input")
        with gr.Column(scale=1, min_width=160):
            run_btn = gr.Button("Run all", variant="primary", elem_id="cmp-run")
            stop_btn = gr.Button("Stop", variant="stop", elem_id="cmp-stop")
    with gr.Row(equal_height=True):
        panes = gr.Radio([2, 3, 4], value=2, label="Panes", elem_id="cmp-panes", scale=1)
        blind = gr.Checkbox(False, label="Blind mode: labels hidden and shuffled until you vote", scale=2,
                            elem_id="cmp-blind")
        sets = gr.Dropdown(list_sets(), value=None, label="Variant set (prompts/compare)", scale=2,
                           elem_id="cmp-set")
        load_btn = gr.Button("Load set", scale=0, min_width=100, elem_id="cmp-load")
        set_name = gr.Textbox(label="Save the variants as", max_lines=1, scale=2, elem_id="cmp-set-name")
        save_btn = gr.Button("Save set", scale=0, min_width=100, elem_id="cmp-save")
    set_note = gr.Markdown("", elem_id="cmp-set-note")
    editors = cp.build_editors(presets, 2)
    status = gr.Markdown("", elem_id="cmp-status")
    outs = cp.build_outputs(2)
    with gr.Row(visible=False, elem_id="cmp-vote-row") as vote_row:
        vote_btns = [gr.Button(f"Response {i + 1} is better", visible=i < 2, elem_id=f"cmp-vote-{i}")
                     for i in range(MAX_PANES)]
        tie_btn = gr.Button("Tie", elem_id="cmp-vote-tie")
    vote_note = gr.Markdown("", elem_id="cmp-vote-note")
    with gr.Accordion("Blind-vote tally, per pair of variants (name #fingerprint)", open=True):
        tally = gr.Dataframe(tally_frame(), interactive=False, elem_id="cmp-tally")
    with gr.Accordion("Word diff of two outputs", open=True):
        with gr.Row(equal_height=True):
            diff_a = gr.Dropdown(list(range(1, MAX_PANES + 1)), value=1, label="From pane", elem_id="cmp-diff-a")
            diff_b = gr.Dropdown(list(range(1, MAX_PANES + 1)), value=2, label="To pane", elem_id="cmp-diff-b")
            diff_btn = gr.Button("Diff", scale=0, min_width=100, elem_id="cmp-diff-btn")
        diff_view = gr.HTML("", elem_id="cmp-diff")
    with gr.Row():
        json_btn = gr.Button("Export JSON", size="sm", elem_id="cmp-export-json")
        md_btn = gr.Button("Export Markdown", size="sm", elem_id="cmp-export-md")
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
    pane_outputs = [o.label for o in outs] + [o.text for o in outs] + [o.stats for o in outs]

    # ---- running ------------------------------------------------------------------------
    def shown(comparison: Comparison, texts: list[str], revealed: bool, stats_hidden: bool) -> list:
        order = cp.order_of(len(texts), comparison)
        return (cp.labels(comparison, revealed) + cp.pad([texts[i] for i in order])
                + cp.stats_lines(comparison, stats_hidden))

    @gpu(duration=120)
    def run(request: gr.Request, text: str, n: int, blind_on: bool, *values):
        """Every pane's variant answers `text` in one batched generation; the panes stream together."""
        try:
            variants = cp.variants_from_form(n, values)
            check_input(text)
            model = manager.model
        except LabError as e:
            raise gr.Error(str(e)) from None
        k = len(variants)
        order = random.sample(range(k), k) if blind_on else None
        comparison = Comparison(text, variants, [""] * k, [None] * k, model.info.to_dict(), order=order)
        event = cancels.start(request.session_hash)
        busy = cp.pad(["*generating…*"] * k)
        yield (*cp.labels(comparison, False), *cp.pad([""] * k), *busy, gr.Row(visible=False), "", None,
               f"Generating {k} variants in one batch…")
        t0, last, panes_now = time.monotonic(), 0.0, None
        try:
            with contextlib.closing(run_variants(model, text, variants, event)) as stream:
                for panes_now in stream:
                    if time.monotonic() - last > STREAM_INTERVAL_S:
                        last = time.monotonic()
                        texts = [p.text for p in panes_now]
                        yield (*[gr.skip()] * MAX_PANES, *cp.pad([texts[i] for i in cp.order_of(k, comparison)]),
                               *[gr.skip()] * (MAX_PANES + 4))
        except LabError as e:
            raise gr.Error(str(e)) from None
        finally:
            cancels.finish(request.session_hash, event)
        comparison = Comparison.from_panes(text, variants, panes_now, model.info, order)
        done = f"{k} variants, one batched generation, {time.monotonic() - t0:.1f} s."
        if order is not None:
            done += " Which response is better? Vote below to reveal the labels."
        yield (*shown(comparison, comparison.outputs, False, order is not None), gr.Row(visible=order is not None),
               "", comparison, done)

    def stop(request: gr.Request) -> None:
        cancels.stop(request.session_hash)

    def vote(comparison: Comparison | None, pane: int | None):
        if comparison is None or comparison.order is None:
            raise gr.Error("Run a comparison in blind mode first, then vote.")
        if comparison.voted:
            raise gr.Error("This comparison has its vote; run it again to vote again.")
        if pane is not None and pane >= len(comparison.order):
            raise gr.Error(f"There is no response {pane + 1} in this comparison.")
        comparison.vote = None if pane is None else comparison.order[pane]
        comparison.voted = True
        try:
            vote_id = votes().record(comparison)
        except LabError as e:
            raise gr.Error(str(e)) from None
        note = f"Vote {vote_id} recorded: {comparison.verdict}. The labels are revealed above."
        return (*cp.labels(comparison, True), *cp.stats_lines(comparison, False), gr.Row(visible=False), note,
                comparison, tally_frame())

    def diff(comparison: Comparison | None, a, b) -> str:
        if comparison is None:
            raise gr.Error("Run a comparison first, then diff two of its outputs.")
        k = len(comparison.variants)
        a, b = int(a or 1), int(b or 2)
        if not (1 <= a <= k and 1 <= b <= k):
            raise gr.Error(f"Pick two panes between 1 and {k}.")
        order = cp.order_of(k, comparison)
        names = cp.plain_labels(comparison, comparison.voted)
        return word_diff_html(comparison.outputs[order[a - 1]], comparison.outputs[order[b - 1]],
                              names[a - 1], names[b - 1])

    def export(comparison: Comparison | None, fmt: str):
        if comparison is None:
            raise gr.Error("Run a comparison first, then export it.")
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(tempfile.mkdtemp(prefix="qwen-lab-")) / f"qwen-lab-compare-{stamp}.{fmt}"
        path.write_text(comparison.to_json() if fmt == "json" else comparison.to_markdown(), encoding="utf-8")
        return gr.File(value=str(path), visible=True)

    def save(name: str, n: int, *values):
        try:
            path = save_set(name, cp.variants_from_form(n, values))
        except LabError as e:
            raise gr.Error(str(e)) from None
        return f"Saved to `{path}`.", gr.Dropdown(choices=list_sets(), value=path.stem)

    def load(name: str | None):
        try:
            if not name:
                raise LabError("Pick a variant set to load first.")
            description, variants = load_set(name)
        except LabError as e:
            raise gr.Error(str(e)) from None
        return (len(variants), *cp.form_values(variants, presets), f"Loaded **{name}**: {description}")

    def show_panes(n: int):
        n = int(n)
        return (*cp.visibility(n), *cp.visibility(n), *[gr.Button(visible=i < n) for i in range(MAX_PANES)])

    # ---- variants on a benchmark ----------------------------------------------------------
    def bench_watch(variants, benchmark: str, limit, seed, max_new, key: str):
        """Run the variants on the benchmark in the background; yield progress lines, then (line, table rows)."""
        try:
            model = manager.model
            limit = form_number("limit", limit, "The number of items") if limit else 0
            seed = None if seed is None else form_number("seed", seed, "The seed")
            max_new = form_number("max_new_tokens", max_new, "Max new tokens") if max_new else None
        except LabError as e:
            raise gr.Error(str(e)) from None

        def job(on_progress, cancel):
            return bench_variants(model, variants, benchmark, limit, seed, max_new,
                                  on_progress=lambda i, p: on_progress((i, p)), cancel=cancel)

        shown_at = 0.0
        try:
            with in_background(job, cancels, key, name="lab-compare-bench") as work:
                for i, p in work:
                    if time.monotonic() - shown_at >= BENCH_UPDATE_S:
                        shown_at = time.monotonic()
                        yield f"Variant {i + 1}/{len(variants)} **{variants[i].name}**: {p}", None
        except LabError as e:
            raise gr.Error(str(e)) from None
        rows = work.result
        note = (f"{len(rows)} runs on {benchmark}, {int(limit)} items each; they are in the Evaluate tab's history: "
                + ", ".join(f"`{r.run_id}`" for r in rows))
        yield note, rows

    @gpu(duration=600)
    def bench_page(request: gr.Request, benchmark: str, limit, seed, max_new, n: int, *values):
        try:
            variants = cp.variants_from_form(n, values)
        except LabError as e:
            raise gr.Error(str(e)) from None
        yield "Starting…", gr.skip()
        for note, rows in bench_watch(variants, benchmark, limit, seed, max_new, request.session_hash):
            yield note, gr.skip() if rows is None else pd.DataFrame(bench_table(rows), columns=BENCH_HEADERS)

    # ---- events -------------------------------------------------------------------------
    run_outputs = [*pane_outputs, vote_row, vote_note, state, status]
    for trigger in (run_btn.click, user_input.submit):
        trigger(run, [user_input, panes, blind, *form], run_outputs, api_visibility="private", concurrency_id="model")
    stop_btn.click(stop, None, None, queue=False, api_visibility="private")
    vote_outputs = [*[o.label for o in outs], *[o.stats for o in outs], vote_row, vote_note, state, tally]
    def voter(pane: int | None):
        return lambda comparison: vote(comparison, pane)

    for i, btn in enumerate(vote_btns):
        btn.click(voter(i), state, vote_outputs, api_visibility="private")
    tie_btn.click(voter(None), state, vote_outputs, api_visibility="private")
    diff_btn.click(diff, [state, diff_a, diff_b], diff_view, api_visibility="private")
    json_btn.click(lambda c: export(c, "json"), state, export_file, api_visibility="private")
    md_btn.click(lambda c: export(c, "md"), state, export_file, api_visibility="private")
    save_btn.click(save, [set_name, panes, *form], [set_note, sets], api_visibility="private")
    load_btn.click(load, sets, [panes, *form, set_note], api_visibility="private")
    panes.change(show_panes, panes, [*[e.column for e in editors], *[o.column for o in outs], *vote_btns],
                 api_visibility="private")
    for e in editors:
        e.preset.input(lambda name: presets.get(name, gr.skip()), e.preset, e.system, api_visibility="private")
        e.system.input(lambda: cp.CUSTOM, None, e.preset, api_visibility="private")
    bench_btn.click(bench_page, [bench, bench_limit, bench_seed, bench_new, panes, *form], [bench_note, bench_df],
                    api_visibility="private", concurrency_id="model")
    if tab is not None:  # opening the tab shows the votes and sets made meanwhile (other visitors, other tabs)
        tab.select(lambda: (tally_frame(), gr.Dropdown(choices=list_sets())), None, [tally, sets],
                   api_visibility="private")

    # ---- for programs -----------------------------------------------------------------------
    def compare(input: str, variants: str) -> list[str]:
        """Every variant answers `input` in one batched generation; streams the outputs so far, one per variant.

        variants: a JSON list of 2 to 4 objects, each with optional "name", "system" (text, or a preset name
        of prompts/system.yaml), "template" (with an {input} slot; default "{input}"), "temperature",
        "top_p", "top_k", "repetition_penalty", "max_new_tokens" and "seed"."""
        try:
            parsed = parse_variants(variants)
            check_input(input)
            model = manager.model
        except LabError as e:
            raise gr.Error(str(e)) from None
        last, texts = 0.0, [""] * len(parsed)
        try:
            with contextlib.closing(run_variants(model, input, parsed)) as stream:
                for panes_now in stream:
                    texts = [p.text for p in panes_now]
                    if time.monotonic() - last > STREAM_INTERVAL_S:
                        last = time.monotonic()
                        yield texts
        except LabError as e:
            raise gr.Error(str(e)) from None
        yield texts

    gr.api(gpu(duration=120)(compare), api_name="compare", concurrency_id="model")

    def compare_bench(variants: str, benchmark: str | None = None, limit: int = 20, seed: int = DEFAULT_SEED,
                      max_new_tokens: int = 256) -> list[dict]:
        """Each variant's system prompt and template over the same seeded `limit` items of the benchmark (None:
        the first listed; multiple choice in gen mode, code in instruct mode), greedy: one saved run per variant.
        Returns one row per variant: variant, run_id, status, accuracy (code: pass@1), correct, items."""
        benchmark = benchmark or benchmarks()[0]
        try:
            parsed = parse_variants(variants)
        except LabError as e:
            raise gr.Error(str(e)) from None
        rows = []
        for _, rows in bench_watch(parsed, benchmark, limit, seed, max_new_tokens, f"api-{id(parsed)}"):
            pass
        return [{"variant": r[0], "accuracy": r[1], "correct": r[2], "items": r[3], "status": r[5], "run_id": r[6]}
                for r in bench_table(rows or [])]

    gr.api(gpu(duration=600)(compare_bench), api_name="compare_bench", concurrency_id="model")
