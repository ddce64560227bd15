"""What the Evaluate tab shows, made from run records: tables, the chart's data, progress and notes.

Pure functions of `Run`, summary and `Sample` records (pandas frames and HTML/Markdown text in, no
Gradio and no model), so the page, and anyone reading it, sees the very numbers `lab.eval.report`
computes for the CLI.

Text from a run is shown through report's `escape`, `one_line` and `block`: a lone surrogate (which the
page's JSON cannot carry) or a NUL shows as \\ud800 or \\x00, and a field of megabytes is cut with a note
(the store keeps it whole; the export writes it all).
"""

from __future__ import annotations

import html
import json
import re
import time

import pandas as pd

from lab.eval import report
from lab.eval.kinds import kind_of
from lab.eval.runner import Progress, Runner
from lab.eval.spec import load_spec
from lab.eval.store import Run, RunStore, Sample

NO_SUBSET = "none"
MAX_SAMPLE_ROWS = 2000  # a whole benchmark can hold 14,042 samples; the page shows this many, the CLI exports all
HISTORY_HEADERS = ["run", "name", "benchmark", "mode", "shots", "model", "quant", "status", "done", "score %",
                   "started"]
SAMPLE_HEADERS = ["key", "subject", "prompt", "output", "answer", "gold", "correct"]
CHOICE_SUMMARY_HEADERS = ["group", "n", "micro %", "macro %"]
CODE_SUMMARY_HEADERS = ["metric", "value"]
CHART_HEADERS = ["subject", "accuracy %", "questions", "group", "name"]
ABBREVIATIONS = {"high_school_": "hs ", "elementary_": "elem. ", "professional_": "prof. ", "government": "gov.",
                 "_and_": " & ", "_": " "}  # axis labels of 57 subjects must be short to stay legible
COMPARE_HEADERS = ["subject", "n", "A %", "B %", "B−A pts"]
FLIP_HEADERS = ["key", "subject", "A", "B", "gold", "now"]


# ---- the form ---------------------------------------------------------------------------
def subset_choices(benchmark: str) -> list[tuple[str, str]]:
    spec = load_spec(benchmark)
    return [("none — whole benchmark", NO_SUBSET)] + [
        (f"{name} — {s.description}" if s.description else name, name) for name, s in spec.subsets.items()]


def model_markdown(info) -> str:
    if info is None:
        return "**No model loaded** — load one in the Chat tab's Model panel first."
    notes = "".join(f" · ⚠️ {note}" for note in info.notes)
    return f"**Runs on:** {info.summary()}{notes}"


# ---- progress -----------------------------------------------------------------------------
def progress_html(text: str, fraction: float | None = None, tone: str = "run") -> str:
    """A bar (when the fraction is known) over one line of text; `tone` is run, done, warn or error."""
    colour = {"run": "#7c3aed", "done": "#16a34a", "warn": "#d97706", "error": "#dc2626"}[tone]
    bar = ""
    if fraction is not None:
        width = max(0.0, min(1.0, fraction)) * 100
        bar = (f'<div style="height:10px;border-radius:5px;background:rgba(127,127,127,.2);overflow:hidden;'
               f'margin-bottom:6px"><div style="height:100%;width:{width:.1f}%;background:{colour}"></div></div>')
    return f'<div class="eval-progress-box">{bar}<div class="eval-progress-text">{html.escape(text)}</div></div>'


def running_text(p: Progress | None, benchmark: str, elapsed_s: float, left_s: float | None = None) -> str:
    if p is None:
        return f"{benchmark}: loading the data and running the first batch… {elapsed_s:.0f} s"
    what = f"running {kind_of(load_spec(benchmark)).RATE}"
    acc = "—" if p.accuracy is None else f"{100 * p.accuracy:.1f}%"
    left = "" if left_s is None else f" · about {duration(left_s)} left"
    return f"{p.run_id}: {p.done}/{p.total} done · {what} {acc} · {elapsed_s:.0f} s{left}"


def time_left(done_now: int, done_at_start: int, total: int, seconds: float) -> float | None:
    """Seconds left at the pace since this process took the run up (a resumed run's old samples do not count)."""
    new = done_now - done_at_start
    return None if new <= 0 or seconds <= 0 else (total - done_now) * seconds / new


def duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


def result_text(run: Run, summary: dict, done: int, elapsed_s: float | None = None) -> tuple[str, str]:
    """The line shown when a run ends, and its tone."""
    took = f" · {elapsed_s:.1f} s" if elapsed_s is not None else ""
    if run.status == "cancelled":
        return (f"Cancelled — resume it from the history: run {run.id} keeps {done}/{run.n_total} samples; "
                "it is selected above, press Resume to finish it."), "warn"
    return f"Finished {run.id}: {done}/{run.n_total} · {score_text(summary)}{took}", "done"


def score_text(summary: dict | None) -> str:
    o = (summary or {}).get("overall", {})
    if "pass@1" in o:
        extra = f" · pass@10 {report.pct(o['pass@10'])}%" if "pass@10" in o else ""
        return f"pass@1 {report.pct(o['pass@1'])}%{extra} ({o['passed']}/{o['samples']} programs passed)"
    if "accuracy" in o:
        return (f"accuracy {report.pct(o['accuracy'])}% (micro, {o['correct']}/{o['n']}) · "
                f"macro {report.pct(o['macro'])}% · {o['unparseable']} unparseable")
    return "no samples yet"


# ---- one run --------------------------------------------------------------------------------
def summary_of(store: RunStore, run: Run) -> dict:
    """The stored summary, or one made from the samples an unfinished run holds so far."""
    if run.summary is not None:
        return run.summary
    return Runner.summarize(load_spec(run.benchmark), store.samples(run.id), run.params.get("groups", {}))


def headline(run: Run, done: int, summary: dict) -> str:
    what = run.benchmark + (f"/{run.subset}" if run.subset else "") + f" · {run.mode}"
    if run.shots is not None:
        what += f" · {run.shots}-shot"
    what = report.escape(what, keep="")
    title = f"{shown(run.name)} · `{run.id}`" if run.name else run.id
    return (f"### {title}\n{what} · {shown(run.model)} ({shown(run.quant) or '—'}) · seed {run.seed}  \n"
            f"{run.state} {done}/{run.n_total} · started {started(run)}\n\n**{score_text(summary)}**\n\n"
            f"<small>{summary.get('averages', '')}</small>")


def started(run: Run) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started_at))


def summary_frame(summary: dict) -> pd.DataFrame:
    o = summary["overall"]
    if "pass@1" in o:
        rows = [[k, f"{100 * o[k]:.1f}%"] for k in ("pass@1", "pass@10", "pass@100") if k in o]
        rows += [["programs passed", f"{o['passed']}/{o['samples']}"], ["tasks", str(o["tasks"])]]
        rows += [[f"status: {k}", str(v)] for k, v in sorted(summary.get("statuses", {}).items())]
        return pd.DataFrame(rows, columns=CODE_SUMMARY_HEADERS)
    rows = [["overall", o["n"], report.pct(o["accuracy"]), report.pct(o["macro"])]]
    rows += [[g, b["n"], report.pct(b["accuracy"]), report.pct(b["macro"])] for g, b in summary["groups"].items()]
    return pd.DataFrame(rows, columns=CHOICE_SUMMARY_HEADERS)


def chart_frame(run: Run, summary: dict, samples: list[Sample]) -> pd.DataFrame:
    """Accuracy per subject; for a code benchmark, the pass rate of each task over its samples."""
    if "subjects" not in summary:
        spec = load_spec(run.benchmark)
        by_task: dict[str, list[bool]] = {}
        for s in samples:
            by_task.setdefault(s.subject or s.key, []).append(s.correct)
        rows = [["#" + task.removeprefix(spec.task_prefix) if spec.task_prefix else task,
                 round(100 * sum(v) / len(v), 1), len(v), spec.title, task] for task, v in by_task.items()]
        return pd.DataFrame(rows, columns=CHART_HEADERS)
    group_of: dict[str, str] = {}
    for group, subjects in run.params.get("groups", {}).items():
        for s in subjects:
            group_of.setdefault(s, group)  # the category first; C-Eval Hard comes after the categories
    rows = [[short_subject(name), round(100 * s["accuracy"], 1), s["n"], group_of.get(name, "other"), name]
            for name, s in summary["subjects"].items()]
    return pd.DataFrame(rows, columns=CHART_HEADERS)


def short_subject(name: str) -> str:
    for long, short in ABBREVIATIONS.items():
        name = name.replace(long, short)
    return name


def empty_chart() -> pd.DataFrame:
    # Typed columns: the plot reads the y axis as numbers from the first value it gets, even an empty one.
    return pd.DataFrame({"subject": pd.Series(dtype=str), "accuracy %": pd.Series(dtype=float),
                         "questions": pd.Series(dtype=int), "group": pd.Series(dtype=str),
                         "name": pd.Series(dtype=str)})


def prompt_gist(prompt: str, width: int = 90) -> str:
    """The part of a prompt that tells samples apart: the last question, or the function asked for."""
    text = prompt
    i = prompt.rfind("\nA. ")  # the options of the question asked last (earlier ones are the shots)
    if i > 0:
        text = prompt[:i]
        text = text[text.rfind("\n\n") + 2:] if "\n\n" in text else text
    else:
        defs = re.findall(r"def \w+\([^)]*\)[^:]*:", prompt)
        text = defs[-1] if defs else prompt
    return clip(text, width)


def clip(text: str | None, width: int) -> str:
    return report.one_line(text, width)


def shown(text: str | None) -> str:
    """A short field (a model, a key) as one line, escaped; a few hundred characters at most."""
    return report.one_line(text, 300)


def sample_frame(samples: list[Sample], wrong_only: bool) -> pd.DataFrame:
    chosen = [s for s in samples if not (wrong_only and s.correct)][:MAX_SAMPLE_ROWS]
    rows = [[shown(s.key), shown(s.subject), prompt_gist(s.prompt), clip(s.output, 60), clip(s.extracted, 40) or "—",
             shown(s.gold), "✓" if s.correct else "✗"] for s in chosen]
    return pd.DataFrame(rows, columns=SAMPLE_HEADERS)


def samples_note(samples: list[Sample], wrong_only: bool) -> str:
    wrong = sum(not s.correct for s in samples)
    shown = min(MAX_SAMPLE_ROWS, wrong if wrong_only else len(samples))
    more = f" (the first {shown:,}; `python -m lab.eval export` writes all)" if shown < (
        wrong if wrong_only else len(samples)) else ""
    return f"{len(samples):,} samples, {wrong:,} wrong; showing {shown:,}{more}. Select a row to read it in full."


def sample_text(s: Sample) -> str:
    """One sample in full: its verdict and reason, output, answer, prompt and detail, each escaped and cut at
    report.SHOWN_CHARS characters with a note."""
    detail = json.dumps(s.detail, ensure_ascii=False, indent=1) if s.detail else "{}"
    verdict = "correct" if s.correct else "wrong"
    if isinstance(s.detail, dict) and s.detail.get("status"):  # a program's verdict and its reason
        verdict = clip(f"{s.detail['status']}: {s.detail.get('result', '')}", 300)
    took = f", {s.duration_s:.3f} s" if s.duration_s is not None else ""
    # The output and the answer read from it first: the prompt opens with the shots, the question is at its end.
    return (f"{shown(s.key)} · {shown(s.subject)} · answer {clip(s.extracted, 60) or '—'} · "
            f"gold {shown(s.gold) or '—'} · {verdict}{took}\n\n"
            f"── output ──\n{report.block(s.output)}\n\n── extracted ──\n{report.block(s.extracted) or '—'}\n\n"
            f"── prompt ──\n{report.block(s.prompt)}\n\n── detail ──\n{report.block(detail)}")


# ---- the history ------------------------------------------------------------------------------
def history_frame(store: RunStore) -> pd.DataFrame:
    """Every run, newest first; a running one with its time left, estimated from its pace so far."""
    rows = []
    for r in store.runs():
        done = r.n_total if r.status == "finished" else len(store.done_keys(r.id))
        o = (r.summary or {}).get("overall", {})
        state = r.state
        if state == "running":
            left = time_left(done, 0, r.n_total, time.time() - r.started_at)
            state = f"running · {'about ' + duration(left) + ' left' if left is not None else 'first batch'}"
        rows.append([r.id, shown(r.name), shown(r.benchmark + (f"/{r.subset}" if r.subset else "")), shown(r.mode),
                     "" if r.shots is None else r.shots, shown(r.model), shown(r.quant), state, f"{done}/{r.n_total}",
                     report.pct(o.get("pass@1", o.get("accuracy"))), started(r)])
    return pd.DataFrame(rows, columns=HISTORY_HEADERS)


def run_choices(store: RunStore) -> list[tuple[str, str]]:
    return [(f"{shown(r.name) + ' · ' if r.name else ''}{r.id} · {shown(r.model)} {shown(r.quant)}"
             f"{'' if r.shots is None else f' · {r.shots}-shot'} · {r.state}", r.id) for r in store.runs()]


def form_of(run: Run) -> dict:
    """The form's values that would start this run again: benchmark, subset, mode, shots, limit, seed."""
    req = run.params.get("request", {})
    return {"benchmark": run.benchmark, "subset": run.subset or NO_SUBSET, "mode": run.mode,
            "shots": run.shots if run.shots is not None else 0, "limit": req.get("limit") or 0, "seed": run.seed}


# ---- two runs ---------------------------------------------------------------------------------
def compare_views(cmp: dict, run_a: Run, run_b: Run) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    o = cmp["overall"]
    text = (f"**A** = {shown(run_a.label)}  \n**B** = {shown(run_b.label)}  \n"
            f"Overall on the {cmp['shared']:,} samples both hold (only A: {cmp['only_a']}, only B: {cmp['only_b']}): "
            f"A **{report.pct(o['a'])}%** · B **{report.pct(o['b'])}%** · B−A **{signed(o['delta'])} pts** · "
            f"{len(cmp['flipped'])} flipped ({cmp['gained']} now right, {cmp['lost']} now wrong).")
    rows = [["overall", cmp["shared"], report.pct(o["a"]), report.pct(o["b"]), signed(o["delta"])]]
    rows += [[shown(name), s["n"], report.pct(s["a"]), report.pct(s["b"]), signed(s["delta"])]
             for name, s in cmp["subjects"].items()]
    flips = [[shown(f["key"]), shown(f["subject"]), clip(f["a"], 60) or "—", clip(f["b"], 60) or "—",
              shown(f["gold"]), f["now"]] for f in cmp["flipped"][:MAX_SAMPLE_ROWS]]
    return text, pd.DataFrame(rows, columns=COMPARE_HEADERS), pd.DataFrame(flips, columns=FLIP_HEADERS)


def signed(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.1f}"
