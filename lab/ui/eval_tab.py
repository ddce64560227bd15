"""The Evaluate tab: run any benchmark of evals/ on the loaded model with live progress and
Cancel/Resume; the summary, a per-subject chart and every sample; the run history; two runs compared.

The runner works in a background thread and writes each batch to the run store (`runs/lab.db`,
LAB_RUNS_DIR moves it); the event that started it polls its progress and updates the page a few
times a second. Evaluation shares the "model" concurrency group with loading a model, so one thing
at a time runs on the model and the rest wait in line; Cancel and the history do not wait.

Programs reach it by api_name (gradio_client): `/evaluate` (benchmark, subset, mode, shots, limit,
seed -> run id, summary, progress text; streamed), `/eval_cancel`, `/eval_resume` (run id -> as
`/evaluate`), `/eval_run` (run id, only wrong -> its views; the chart is HTML bars) and `/eval_compare` (run A,
run B -> overall, per-subject and flipped tables). The history's `/eval_runs`, `/eval_rename`, `/eval_delete` and
`/eval_trend` are lab/ui/eval_history.py's; the quantization report section and its `/quant_report` are
lab/ui/quant_views.py's.

The first view shows the newest run (or, before any, what to do), and picking a run fills the form with its
settings.
"""

from __future__ import annotations

import functools
import time
from typing import Callable

import gradio as gr
import pandas as pd

from lab.errors import LabError
from lab.eval import report
from lab.eval.kinds import kind_of
from lab.eval.runner import DEFAULT_SEED, EvalRequest, Progress, Runner, default_mode
from lab.eval.spec import benchmarks, load_spec
from lab.eval.store import RunStore
from lab.models.manager import ModelManager
from lab.space import cap_limit, eval_notice, gpu, on_space
from lab.ui import eval_charts as charts
from lab.ui import eval_views as views
from lab.ui.eval_history import build_history, recolour, trend, wire
from lab.ui.common import SessionCancels, whole_number, form_number, in_background
from lab.ui.quant_views import build_quant_section

WELCOME = ("### No run shown yet\nPick a benchmark and press **Start** (a seeded sample of 20 items takes seconds on "
           "tiny-random), or select a run in the history below.")
NO_CHART = "The chart of accuracy per subject appears here once a run is shown."
DEFAULT_LIMIT = 20  # a click must not start a 14,042-question run on a CPU
UPDATE_INTERVAL_S = 0.25  # at most four progress updates a second
GPU_SECONDS = 180  # ZeroGPU: how long one run may hold the GPU (a Space caps runs at 100 questions / 20 problems)
POLL_S = 1.0  # without news from the runner, the elapsed time still ticks once a second


def request_from_form(benchmark: str, subset: str | None, mode: str | None, shots: float | None,
                      limit: float | None, seed: float | None) -> EvalRequest:
    """The form's values as a runner request: numbers by the one rule (finite, in range), and the runner checks
    the rest against the spec."""
    spec = load_spec(benchmark)
    shots = None if not kind_of(spec).TAKES_SHOTS or shots is None else form_number("shots", shots, "Shots")
    limit = None if limit is None else form_number("limit", limit, "The limit (0 for everything)")
    return EvalRequest(
        benchmark=benchmark,
        subset=None if subset in (None, "", views.NO_SUBSET) else subset,
        mode=mode or None,
        shots=shots,
        limit=limit or None,
        seed=DEFAULT_SEED if seed is None else form_number("seed", seed, "The seed"))


def build_eval_tab(manager: ModelManager, tab: gr.Tab | None = None) -> None:
    cancels = SessionCancels()
    store = functools.cache(RunStore.open)  # on first use: a bad LAB_RUNS_DIR is a sentence on the page, not a crash

    def model_markdown() -> str:
        return views.model_markdown(manager.model.info if manager.loaded else None)

    names = benchmarks()
    first = load_spec(names[0])
    try:
        past, choices, note = views.history_frame(store()), views.run_choices(store()), "Pick a benchmark, press Start."
    except LabError as e:
        past, choices, note = pd.DataFrame(columns=views.HISTORY_HEADERS), [], str(e)

    # ---- layout -------------------------------------------------------------------------
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            model_md = gr.Markdown(model_markdown(), elem_id="eval-model")
            if on_space():
                gr.Markdown(f"ℹ️ {eval_notice()}", elem_id="eval-space-notice")
            benchmark = gr.Dropdown(names, value=first.name, label="Benchmark", elem_id="eval-benchmark")
            subset = gr.Dropdown(views.subset_choices(first.name), value=views.NO_SUBSET, label="Subset",
                                 allow_custom_value=True, elem_id="eval-subset")
            mode = gr.Dropdown(list(kind_of(first).MODES), value=default_mode(first), allow_custom_value=True,
                               label="Mode", info=kind_of(first).MODE_HELP, elem_id="eval-mode")
            shots = gr.Slider(0, 5, value=first.default_shots, step=1, label="Shots (solved examples first)",
                              elem_id="eval-shots")
            limit = whole_number(DEFAULT_LIMIT, precision=0, minimum=0, label="Limit (0 or empty: every item)",
                              info="a seeded sample spread over the subjects", elem_id="eval-limit")
            seed = whole_number(DEFAULT_SEED, precision=0, label="Seed", elem_id="eval-seed")
            with gr.Row():
                start_btn = gr.Button("Start", variant="primary", elem_id="eval-start")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="eval-cancel")
        with gr.Column(scale=4):
            progress = gr.HTML(views.progress_html(note), elem_id="eval-progress")
            with gr.Row():
                run_dd = gr.Dropdown(choices, value=None, label="Run shown", scale=4,
                                     allow_custom_value=True, elem_id="eval-run")
                resume_btn = gr.Button("Resume", scale=0, min_width=120, elem_id="eval-resume")
            with gr.Row():
                headline = gr.Markdown(WELCOME, elem_id="eval-headline")
                summary_df = gr.Dataframe(headers=views.CHOICE_SUMMARY_HEADERS, value=[], interactive=False,
                                          label="Summary", min_width=360, elem_id="eval-summary")
            gr.Markdown("**Accuracy per subject** (code benchmarks: pass rate per task)", elem_id="eval-chart-title")
            chart = gr.HTML(charts.bars_html(None, NO_CHART), elem_id="eval-chart")
            with gr.Row(equal_height=True):
                samples_note = gr.Markdown("", elem_id="eval-samples-note")
                wrong_only = gr.Checkbox(False, label="Only wrong answers", scale=0, min_width=200,
                                         elem_id="eval-wrong-only")
            samples_df = gr.Dataframe(headers=views.SAMPLE_HEADERS, value=[], interactive=False, max_height=420,
                                      show_search="search", label="Samples",
                                      column_widths=["15%", "14%", "31%", "16%", "8%", "7%", "9%"],
                                      elem_id="eval-samples")
            sample_box = gr.Textbox(label="The selected sample in full", lines=6, max_lines=24, interactive=False,
                                    buttons=["copy"], elem_id="eval-sample")
            with gr.Accordion("Summary (JSON)", open=False):
                summary_json = gr.JSON(label="Summary", elem_id="eval-summary-json")
    hist, refresh_btn, rename_btn, delete_btn = build_history(store, names, past)
    runs_df = hist.table
    with gr.Accordion("Compare two runs", open=True):
        with gr.Row():
            run_a = gr.Dropdown(choices, value=None, label="Run A", allow_custom_value=True,
                                elem_id="eval-compare-a")
            run_b = gr.Dropdown(choices, value=None, label="Run B", allow_custom_value=True,
                                elem_id="eval-compare-b")
            compare_btn = gr.Button("Compare", scale=0, min_width=120, elem_id="eval-compare-btn")
        compare_md = gr.Markdown("", elem_id="eval-compare-overall")
        with gr.Row():
            compare_df = gr.Dataframe(headers=views.COMPARE_HEADERS, value=[], interactive=False, max_height=360,
                                      label="Per subject (overall first)", elem_id="eval-compare-subjects")
            flips_df = gr.Dataframe(headers=views.FLIP_HEADERS, value=[], interactive=False, max_height=360,
                                    label="Samples that flipped", elem_id="eval-compare-flips")
    with gr.Accordion("Quantization report", open=True, elem_id="quant-section"):
        build_quant_section(manager, store, tab)  # lab/ui/quant_views.py: variants of one model on the same items
    form = [benchmark, subset, mode, shots, limit, seed]
    run_outputs = [run_dd, summary_json, progress]
    view_outputs = [headline, summary_df, chart, samples_note, samples_df, sample_box]

    # ---- running --------------------------------------------------------------------------
    def watch(job: Callable, bench: str, key: str):
        """Run `job(on_progress, cancel)` in the background; yield progress, then the run id and its summary."""
        t0, shown, latest, base = time.monotonic(), 0.0, None, None
        yield gr.skip(), gr.skip(), views.progress_html(views.running_text(None, bench, 0))
        try:
            with in_background(job, cancels, key, name="lab-eval") as work:
                for item in work.events(POLL_S):  # TICK once a second without news: the elapsed time still moves
                    latest = item if isinstance(item, Progress) else latest
                    if latest is not None and base is None:  # the pace counts from the first batch's end
                        base = (latest.done, time.monotonic())
                    if time.monotonic() - shown >= UPDATE_INTERVAL_S:
                        shown = time.monotonic()
                        fraction = latest.done / latest.total if latest and latest.total else None
                        left = views.time_left(latest.done, base[0], latest.total, shown - base[1]) if latest else None
                        yield gr.skip(), gr.skip(), views.progress_html(
                            views.running_text(latest, bench, shown - t0, left), fraction)
        except LabError as e:
            yield gr.skip(), gr.skip(), views.progress_html(str(e), tone="error")
            raise gr.Error(str(e)) from None
        result = work.result
        run = store().get(result.run_id)
        text, tone = views.result_text(run, result.summary, len(result.samples), time.monotonic() - t0)
        # The bare id, so a program gets a string; the dropdown's choices follow in the next event.
        yield run.id, result.summary, views.progress_html(text, len(result.samples) / max(1, run.n_total), tone)

    def refuse(error: LabError):
        yield gr.skip(), gr.skip(), views.progress_html(str(error), tone="error")
        raise gr.Error(str(error))

    def evaluate(benchmark: str, subset: str | None, mode: str | None, shots: float | None, limit: float | None,
                 seed: float | None, request: gr.Request):
        """Run a benchmark on the loaded model: progress while it runs, then the run id and its summary.

        subset: "none" or empty for the whole benchmark; mode: empty for the benchmark's default
        (logprob for multiple choice, instruct for code); shots: 0-5, ignored where the benchmark takes
        none; limit: at most this many items drawn with the seed, 0 or empty for all."""
        try:
            req = request_from_form(benchmark, subset, mode, shots, limit, seed)
            manager.model  # no model loaded: the sentence that says so, before a GPU is asked for
            plan = Runner(store()).plan(req)  # a bad request ends here, in one sentence, before a run is recorded
        except LabError as e:
            yield from refuse(e)
            return
        if on_space():  # a shared GPU: small samples only, and the page says so
            req.limit, notice = cap_limit(kind_of(plan.spec), plan.spec.title, len(plan.items), req.limit)
            if notice:
                gr.Warning(notice)
        yield from run_on_gpu(req, request.session_hash)

    @gpu(duration=GPU_SECONDS)
    def run_on_gpu(req: EvalRequest, key: str):
        """The GPU part of /evaluate (a ZeroGPU worker process on such a Space): run the request."""
        runner, model = Runner(store()), manager.model
        yield from watch(lambda on_progress, cancel: runner.run(model, req, on_progress, cancel), req.benchmark, key)

    def resume(run_id: str | None, request: gr.Request):
        """Finish an unfinished run (cancelled, or cut off) with the model that started it."""
        try:
            if not run_id:
                raise LabError("Pick a run in the history first, then press Resume.")
            run = store().get(run_id)
            manager.model  # no model loaded: the sentence that says so, before a GPU is asked for
        except LabError as e:
            yield from refuse(e)
            return
        yield from resume_on_gpu(run.id, run.benchmark, request.session_hash)

    @gpu(duration=GPU_SECONDS)
    def resume_on_gpu(run_id: str, bench: str, key: str):
        runner, model = Runner(store()), manager.model
        yield from watch(lambda on_progress, cancel: runner.resume(model, run_id, on_progress, cancel), bench, key)

    def cancel(request: gr.Request) -> None:
        cancels.stop(request.session_hash)

    # ---- showing runs ------------------------------------------------------------------------
    def show_run(run_id: str | None, only_wrong: bool):
        """A run's headline, summary table, chart (HTML bars), sample note, sample table and (cleared) detail."""
        if not run_id:
            return WELCOME, [], charts.bars_html(None, NO_CHART), "", [], ""
        try:
            run = store().get(run_id)
            summary = views.summary_of(store(), run)
        except LabError as e:
            raise gr.Error(str(e)) from None
        samples = store().samples(run.id)
        return (views.headline(run, len(samples), summary), views.summary_frame(summary),
                charts.bars_html(views.chart_frame(run, summary, samples), "No samples yet."),
                views.samples_note(samples, only_wrong), views.sample_frame(samples, only_wrong), "")

    def filter_samples(run_id: str | None, only_wrong: bool):
        if not run_id:
            return "", []
        samples = store().samples(run_id)
        return views.samples_note(samples, only_wrong), views.sample_frame(samples, only_wrong)

    def sample_detail(run_id: str | None, evt: gr.SelectData) -> str:
        key = (evt.row_value or [None])[0]
        if not run_id or not key:
            return ""
        match = store().sample(run_id, key)
        return views.sample_text(match) if match else ""

    def pick_run(evt: gr.SelectData):
        return gr.Dropdown(value=(evt.row_value or [None])[0])

    def history() -> pd.DataFrame:
        try:
            return views.history_frame(store())
        except LabError as e:
            raise gr.Error(str(e)) from None

    def fill_form(run_id: str | None):
        """The form set to the run's settings (benchmark, subset, mode, shots, limit, seed), to run it again."""
        try:
            run = store().get(run_id) if run_id else None
        except LabError:
            run = None
        if run is None:
            return (gr.skip(),) * 6
        f, spec = views.form_of(run), load_spec(run.benchmark)
        kind = kind_of(spec)
        return (gr.Dropdown(value=f["benchmark"]), gr.Dropdown(choices=views.subset_choices(run.benchmark),
                                                              value=f["subset"]),
                gr.Dropdown(choices=list(kind.MODES), value=f["mode"], info=kind.MODE_HELP),
                gr.Slider(value=f["shots"], interactive=kind.TAKES_SHOTS), f["limit"], f["seed"])

    def first_view(shown_id: str | None):
        if shown_id:
            return gr.skip()
        try:
            return next((r.id for r in store().runs(limit=50) if r.status == "finished"), None) or gr.skip()
        except LabError:
            return gr.skip()

    def trend_now(benchmark: str):
        return trend(store, benchmark)

    def run_lists():
        try:
            choices = views.run_choices(store())
        except LabError:  # history() has said why already
            return gr.skip(), gr.skip(), gr.skip()
        return gr.Dropdown(choices=choices), gr.Dropdown(choices=choices), gr.Dropdown(choices=choices)

    def compare(a: str | None, b: str | None):
        """B minus A on the samples both runs hold: overall, per subject, and the samples that flipped."""
        try:
            if not a or not b:
                raise LabError("Pick two runs to compare, A and B.")
            run_a, run_b = store().get(a), store().get(b)
            if run_a.benchmark != run_b.benchmark:
                raise LabError(f"Run {a} is {run_a.benchmark} and run {b} is {run_b.benchmark}; "
                               "compare runs of one benchmark.")
        except LabError as e:
            raise gr.Error(str(e)) from None
        cmp = report.run_delta(run_a, store().samples(a), run_b, store().samples(b))
        return views.compare_views(cmp, run_a, run_b)

    def on_benchmark(name: str):
        spec = load_spec(name)
        kind = kind_of(spec)
        return (gr.Dropdown(choices=views.subset_choices(name), value=views.NO_SUBSET),
                gr.Dropdown(choices=list(kind.MODES), value=default_mode(spec), info=kind.MODE_HELP),
                gr.Slider(value=spec.default_shots if kind.TAKES_SHOTS else 0, interactive=kind.TAKES_SHOTS,
                          label="Shots (solved examples first)" if kind.TAKES_SHOTS
                          else f"Shots ({spec.title} takes none)"))

    # ---- events -----------------------------------------------------------------------------
    # Start and Resume end alike: show the run, then refresh the history and the lists of runs.
    for button in (start_btn, resume_btn):  # the history counts the run up while it goes
        button.click(lambda: gr.Timer(active=True), None, hist.timer, queue=False, api_visibility="private")
    for ran in (start_btn.click(evaluate, form, run_outputs, api_name="evaluate", concurrency_id="model"),
                resume_btn.click(resume, run_dd, run_outputs, api_name="eval_resume", concurrency_id="model")):
        ran.then(lambda: gr.Timer(active=False), None, hist.timer, api_visibility="private")
        ran.success(show_run, [run_dd, wrong_only], view_outputs, api_visibility="private")
        recolour(hist, store, ran.then(history, None, runs_df, api_visibility="private").then(
            run_lists, None, [run_dd, run_a, run_b], api_visibility="private").then(
            trend_now, hist.trend_bench, [hist.trend, hist.trend_note], api_visibility="private"))
    cancel_btn.click(cancel, None, None, queue=False, api_name="eval_cancel")

    run_dd.input(show_run, [run_dd, wrong_only], view_outputs, api_name="eval_run").then(
        fill_form, run_dd, form, api_visibility="private")
    runs_df.select(pick_run, None, run_dd, api_visibility="private").then(
        show_run, [run_dd, wrong_only], view_outputs, api_visibility="private").then(
        fill_form, run_dd, form, api_visibility="private")
    wrong_only.change(filter_samples, [run_dd, wrong_only], [samples_note, samples_df], api_visibility="private")
    samples_df.select(sample_detail, run_dd, sample_box, api_visibility="private")
    # the run shown follows a rename (its heading names it) and a delete (no longer shown), and the trend a delete
    renamed, deleted = wire(hist, store, refresh_btn, rename_btn, delete_btn, run_dd, run_lists, [run_a, run_b])
    for named_or_gone in (renamed, deleted):
        named_or_gone.then(show_run, [run_dd, wrong_only], view_outputs, api_visibility="private")
    recolour(hist, store, deleted.then(trend_now, hist.trend_bench, [hist.trend, hist.trend_note],
                                       api_visibility="private"))
    compare_btn.click(compare, [run_a, run_b], [compare_md, compare_df, flips_df], api_name="eval_compare")
    # .input, not .change: a run picked sets the benchmark too, and must keep its own subset, mode and shots
    benchmark.input(on_benchmark, benchmark, [subset, mode, shots], api_visibility="private")
    if tab is not None:  # opening the tab shows the model now loaded and the runs made meanwhile
        recolour(hist, store, tab.select(lambda: (model_markdown(), history()), None, [model_md, runs_df],
                                         api_visibility="private").then(
            run_lists, None, [run_dd, run_a, run_b], api_visibility="private").then(
            trend_now, hist.trend_bench, [hist.trend, hist.trend_note], api_visibility="private"))
        # the first view: the newest finished run, not empty tables (a run picked already stays). It leaves the
        # form alone: it lands after the tab opens, over whatever the user has begun to set (picking a run fills it)
        tab.select(first_view, run_dd, run_dd, api_visibility="private").then(
            show_run, [run_dd, wrong_only], view_outputs, api_visibility="private")
    start_btn.click(model_markdown, None, model_md, queue=False, api_visibility="private")
