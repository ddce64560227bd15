"""The Evaluate tab's "Quantization report" section: one model in several variants (fp32, bf16, 8bit, 4bit, ...) on
the same benchmark items, run by lab/eval/quant.py, with progress, Cancel and Resume, the report rendered in the
page, its Markdown, HTML and JSON downloads, and the earlier reports.

The engine loads each variant in turn and frees it before the next. So that every variant has the memory to itself
(and its speed and memory are measured alone), the section frees the chat model before the first variant loads and
loads it again when the report ends, cancelled or failed alike; Chat says "no model is loaded" meanwhile. A report
shares the "model" concurrency group with evaluations and model loads: one of them at a time.

Programs reach it by api_name: `/quant_report` (model, variants, benchmarks, limit, shots, seed -> report id,
progress text; streamed), `/quant_resume` (report id -> as `/quant_report`), `/quant_cancel`, `/quant_reports` (the
table of reports) and `/quant_show` (report id -> headline, report HTML, the three download files).
"""

from __future__ import annotations

import html
import inspect
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gradio as gr
import pandas as pd

from lab.errors import LabError
from lab.eval import quant, report
from lab.eval.runner import DEFAULT_SEED, Runner
from lab.eval.spec import benchmarks, load_spec
from lab.models.manager import LoadRequest, ModelManager
from lab.pump import TICK
from lab.ui.common import SessionCancels, form_number, in_background, whole_number
from lab.ui.eval_views import progress_html, shown

VARIANTS = ["fp32", "bf16", "fp16", "8bit", "4bit", "4bit-nodq"]
DEFAULT_VARIANTS = ["bf16", "4bit"]  # the reference first
SHOTS = ["default", "0", "1", "2", "3", "4", "5"]  # a number box cannot be empty: it shows and sends 0
DEFAULT_LIMIT = 20  # per benchmark: a click must not start whole benchmarks times every variant
REPORT_HEADERS = ["report", "model", "variants", "benchmarks", "status", "created"]
UPDATE_INTERVAL_S = 0.25
POLL_S = 1.0
MEMORY_NOTE = ("Each variant is loaded in turn and freed before the next. While the report runs, the chat model is "
               "freed as well (a model behind a server is left alone), so each variant has the memory to itself and "
               "is measured alone; it is loaded again when the report ends, and Chat answers that no model is loaded "
               "meanwhile. 8bit and 4bit need CUDA: elsewhere their rows say so and the other variants go on.")


@dataclass
class Loading:
    """The page's own progress item: a variant is being loaded and its speed measured (the engine reports no
    progress until its first batch)."""

    variant: str
    index: int
    n_variants: int


# ---- what the section shows (pure) -----------------------------------------------------------
def benchmark_choices() -> list[str]:
    """Every benchmark, and each of its named subsets as `name:subset`, the engine's form."""
    out = []
    for name in benchmarks():
        try:
            subsets = list(load_spec(name).subsets)
        except LabError:  # a broken spec: listed by name, and choosing it says what is wrong
            subsets = []
        out += [name] + [f"{name}:{s}" for s in subsets]
    return out


def running_text(item, elapsed_s: float) -> tuple[str, float | None]:
    """One line for a progress item (Loading or QuantProgress, or None before either) and the share done."""
    if item is None:
        return f"Checking the request and freeing the chat model… {elapsed_s:.0f} s", None
    if isinstance(item, Loading):
        return (f"Variant {item.index + 1}/{item.n_variants} {item.variant}: loading it and measuring its speed… "
                f"{elapsed_s:.0f} s", item.index / item.n_variants)
    p = item
    acc = "—" if p.accuracy is None else f"{100 * p.accuracy:.1f}%"
    left = "estimating the time left" if p.eta_s is None else f"about {duration(p.eta_s)} left"
    share = (p.variant_index + (p.done / p.total if p.total else 0)) / p.n_variants
    return (f"{p.report_id}: variant {p.variant_index + 1}/{p.n_variants} {p.variant} · {p.benchmark} "
            f"{p.done}/{p.total} · running accuracy {acc} · {left} · {elapsed_s:.0f} s"), share


def phase(item) -> tuple:
    """Which step of a report a progress item belongs to: a variant's loading, or one benchmark of a variant."""
    if isinstance(item, Loading):
        return ("loading", item.variant)
    return ("running", item.variant, item.benchmark) if item is not None else ()


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def result_text(rep: dict, elapsed_s: float) -> tuple[str, str]:
    """The line shown when a report stops, and its tone."""
    failed = [v for v in rep["variants"] if v["status"] == "failed"]
    if rep["status"] == "cancelled":
        return (f"Cancelled — report {rep['id']} keeps every finished batch; it is selected below, press Resume "
                "to finish it."), "warn"
    line = f"Finished {rep['id']}: {len(rep['variants']) - len(failed)}/{len(rep['variants'])} variants ran"
    if failed:
        line += " · " + " ".join(f"{v['variant']}: {shown(v['error'])}" for v in failed)
    return f"{line} · {elapsed_s:.1f} s", "warn" if failed else "done"


def headline(rep: dict) -> str:
    q = rep["request"]
    limit = f" · at most {q['limit']} items each" if q.get("limit") else ""
    return (f"### {rep['id']}\n{shown(q['model'])} · variants {shown(', '.join(q['variants']))} (the first is the "
            f"reference) · {shown(', '.join(q['benchmarks']))}{limit} · seed {q['seed']} · **{rep['status']}**")


def report_frame(html_doc: str) -> str:
    """The report's own page (self-contained: inline CSS and SVG) in a sandboxed frame, so its styles and the
    page's stay apart and nothing in it runs."""
    return (f'<iframe id="quant-report-frame" title="Quantization report" sandbox="" '
            f'style="width:100%;height:900px;border:1px solid rgba(127,127,127,.3);border-radius:6px;background:#fff" '
            f'srcdoc="{html.escape(html_doc, quote=True)}"></iframe>')


def exports(rep: dict) -> list[str]:
    """The report as REPORT_ID.quant.md, .html and .json in a temporary folder (Gradio serves files from there)."""
    folder = Path(tempfile.gettempdir()) / "qwen-lab-quant" / rep["id"]
    folder.mkdir(parents=True, exist_ok=True)
    texts = {"md": quant.render_markdown(rep), "html": quant.render_html(rep),
             "json": report.json_text(rep, indent=2) + "\n"}
    paths = []
    for ext, text in texts.items():
        path = folder / f"{rep['id']}.quant.{ext}"
        path.write_text(text, encoding="utf-8")
        paths.append(str(path))
    return paths


def reports_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([[r["id"], shown(r["model"]), shown(", ".join(r["variants"] or [])),
                          shown(", ".join(r["benchmarks"] or [])), r["status"],
                          time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"]))] for r in rows],
                        columns=REPORT_HEADERS)


def report_choices(rows: list[dict]) -> list[tuple[str, str]]:
    return [(f"{r['id']} · {shown(r['model'])} · {r['status']}", r["id"]) for r in rows]


# ---- loading a variant ----------------------------------------------------------------------
def variant_loader(put: Callable[[object], None]) -> Callable:
    """The engine's `loader(request, variant)` over lab.models.load_model (quant.load_kwargs says how, as for the
    CLI); it tells the page first."""
    def load(req: quant.QuantRequest, variant: quant.Variant):
        from lab.models import load_model

        put(Loading(variant.text, req.variants.index(variant.text), len(req.variants)))
        return load_model(**quant.load_kwargs(req, variant, inspect.signature(load_model).parameters))
    return load


# ---- the section ----------------------------------------------------------------------------
def build_quant_section(manager: ModelManager, store: Callable, tab: gr.Tab | None = None) -> None:
    """The section's layout and events; `store()` is the tab's RunStore (opened on first use). Opening `tab` lists
    the reports made meanwhile (the CLI's too)."""
    cancels = SessionCancels()

    try:
        rows, note = quant.list_reports(store()), "Pick the variants and benchmarks, press Start report."
    except LabError as e:
        rows, note = [], str(e)
    current = manager.request.model if manager.request and manager.request.model else (
        manager.model.info.name if manager.loaded else "")

    # ---- layout -------------------------------------------------------------------------
    gr.Markdown("The same model in several variants on the same items: accuracy with 95% intervals, the paired "
                "difference from the reference, speed and memory. " + MEMORY_NOTE, elem_id="quant-note")
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            model = gr.Textbox(current, label="Model (as --model takes it)", max_lines=1, elem_id="quant-model")
            variants = gr.Dropdown(VARIANTS, value=DEFAULT_VARIANTS, multiselect=True, allow_custom_value=True,
                                   label="Variants (the first is the reference)", info=quant.VARIANT_HELP,
                                   elem_id="quant-variants")
            benches = gr.Dropdown(benchmark_choices(), value=["mmlu:mini"], multiselect=True,
                                  label="Benchmarks (name:subset)", elem_id="quant-benchmarks")
            limit = whole_number(DEFAULT_LIMIT, precision=0, minimum=0, label="Limit per benchmark (0: every item)",
                                 elem_id="quant-limit")
            shots = gr.Dropdown(SHOTS, value="default", label="Shots (multiple choice; default: each benchmark's)",
                                elem_id="quant-shots")
            seed = whole_number(DEFAULT_SEED, precision=0, label="Seed", elem_id="quant-seed")
            with gr.Row():
                start_btn = gr.Button("Start report", variant="primary", elem_id="quant-start")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="quant-cancel")
        with gr.Column(scale=4, min_width=300):
            progress = gr.HTML(progress_html(note), elem_id="quant-progress")
            with gr.Row():
                pick = gr.Dropdown(report_choices(rows), value=None, label="Report shown", scale=4,
                                   allow_custom_value=True, elem_id="quant-pick")
                resume_btn = gr.Button("Resume", scale=0, min_width=120, elem_id="quant-resume")
            head = gr.Markdown("", elem_id="quant-headline")
            files = gr.File(label="Downloads: Markdown, HTML, JSON", file_count="multiple", interactive=False,
                            elem_id="quant-files")
            view = gr.HTML("", elem_id="quant-view")
    with gr.Row():
        gr.Markdown("Earlier reports, newest first; select a row to show it above.")
        refresh_btn = gr.Button("Refresh", size="sm", scale=0, min_width=100, elem_id="quant-refresh")
    table = gr.Dataframe(reports_frame(rows), interactive=False, max_height=300, label="Quantization reports",
                         elem_id="quant-reports")

    # ---- running --------------------------------------------------------------------------
    def watch(job: Callable, key: str):
        """Run `job(on_progress, cancel)` with the chat model freed (a server's model is left alone); yield progress,
        then the report id. The chat model is loaded again however the report ends."""
        t0, shown_at, latest, shown = time.monotonic(), 0.0, None, None
        previous = manager.request if manager.loaded and manager.model.info.device != "remote" else None
        yield gr.skip(), progress_html(running_text(None, 0)[0])

        def show(item):
            text, share = running_text(item, time.monotonic() - t0)
            return gr.skip(), progress_html(text, share)

        try:
            if previous is not None:
                manager.unload()
            with in_background(job, cancels, key, name="lab-quant") as work:
                for item in work.events(POLL_S):
                    if item is not TICK and latest is not shown and phase(item) != phase(latest):
                        shown = latest  # a step ends: its last state is shown before the next one's, however fast
                        yield show(latest)
                    latest = latest if item is TICK else item  # TICK: a second without news, the time still moves
                    if time.monotonic() - shown_at >= UPDATE_INTERVAL_S:
                        shown_at, shown = time.monotonic(), latest
                        yield show(latest)
                if latest is not shown:  # the last step's end, which the interval held back
                    yield show(latest)
        except LabError as e:
            yield gr.skip(), progress_html(str(e), tone="error")
            raise gr.Error(str(e)) from None
        finally:
            reload(previous)
        rep = quant.load_report(store(), work.result)
        text, tone = result_text(rep, time.monotonic() - t0)
        yield rep["id"], progress_html(text, 1.0 if rep["status"] == "finished" else None, tone)

    def reload(previous: LoadRequest | None) -> None:
        if previous is not None and not manager.loaded:
            try:
                manager.load(previous)
            except LabError as e:
                gr.Warning(f"The chat model could not be loaded again: {e}")

    def refuse(error: LabError):
        yield gr.skip(), progress_html(str(error), tone="error")
        raise gr.Error(str(error))

    def start(model: str | None, variants: list[str] | None, benchmarks: list[str] | None, limit: float | None,
              shots: str | None, seed: float | None, request: gr.Request):
        """Run a quantization report: progress while it runs (variant, benchmark, running accuracy, time left),
        then the report id. variants: the first is the reference; benchmarks: "mmlu:mini", "humaneval", ...;
        limit: items per benchmark, 0 or empty for all; shots: "0" to "5", or "default" for each benchmark's own."""
        try:
            device = manager.request.device if manager.request else "auto"
            req = quant.QuantRequest(
                model=(model or "").strip(), variants=[v.strip() for v in variants or [] if v.strip()],
                benchmarks=list(benchmarks or []),
                limit=None if limit is None else (form_number("limit", limit, "The limit (0 for every item)") or None),
                shots=None if shots in (None, "", "default") else form_number("shots", float(shots), "Shots"),
                seed=DEFAULT_SEED if seed is None else form_number("seed", seed, "The seed"), device=device)
            quant.check(req, Runner(store()))  # a bad request ends here, before the chat model is freed
        except LabError as e:
            yield from refuse(e)
            return
        yield from watch(lambda put, cancel: quant.run_report(store(), req, put, cancel, loader=variant_loader(put)),
                         request.session_hash)

    def resume(report_id: str | None, request: gr.Request):
        """Finish a cancelled or interrupted report where it stopped."""
        try:
            if not report_id:
                raise LabError("Pick a report in the list first, then press Resume.")
            quant.load_report(store(), report_id)  # no such report: the sentence that says so
        except LabError as e:
            yield from refuse(e)
            return
        yield from watch(lambda put, cancel: quant.run_report(store(), None, put, cancel, resume=report_id,
                                                              loader=variant_loader(put)),
                         request.session_hash)

    def cancel(request: gr.Request) -> None:
        cancels.stop(request.session_hash)

    # ---- showing reports ----------------------------------------------------------------------
    def show(report_id: str | None):
        """A report's headline, its rendered HTML (in a frame) and its Markdown, HTML and JSON files."""
        if not report_id:
            return "", "", None
        try:
            rep = quant.load_report(store(), report_id)
        except LabError as e:
            raise gr.Error(str(e)) from None
        return headline(rep), report_frame(quant.render_html(rep)), exports(rep)

    def reports():
        """Every quantization report, newest first: id, model, variants, benchmarks, status, created."""
        try:
            return reports_frame(quant.list_reports(store()))
        except LabError as e:
            raise gr.Error(str(e)) from None

    def choices():
        try:
            return gr.Dropdown(choices=report_choices(quant.list_reports(store())))
        except LabError:  # reports() has said why already
            return gr.skip()

    def pick_row(evt: gr.SelectData):
        return gr.Dropdown(value=(evt.row_value or [None])[0])

    # ---- events ---------------------------------------------------------------------------------
    for ran in (start_btn.click(start, [model, variants, benches, limit, shots, seed], [pick, progress],
                                api_name="quant_report", concurrency_id="model"),
                resume_btn.click(resume, pick, [pick, progress], api_name="quant_resume", concurrency_id="model")):
        ran.success(show, pick, [head, view, files], api_visibility="private")
        ran.then(reports, None, table, api_visibility="private").then(choices, None, pick, api_visibility="private")
    cancel_btn.click(cancel, None, None, queue=False, api_name="quant_cancel")
    pick.input(show, pick, [head, view, files], api_name="quant_show")
    table.select(pick_row, None, pick, api_visibility="private").then(
        show, pick, [head, view, files], api_visibility="private")
    for listed in (refresh_btn.click(reports, None, table, api_name="quant_reports"),
                   *([tab.select(reports, None, table, api_visibility="private")] if tab is not None else [])):
        listed.then(choices, None, pick, api_visibility="private")
