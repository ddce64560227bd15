"""The Evaluate tab's charts, made from run records: the per-subject chart as horizontal bars in plain HTML (57 MMLU
subjects stay legible at any width, a phone's too: one row per subject, its name in full beside its bar), and the
trend of a benchmark's runs over time, one line per model and quantization.

Pure functions of run records and frames; no Gradio.
"""

from __future__ import annotations

import html
import time

import pandas as pd

from lab.eval.store import Run, RunStore

# Group colours that read on light and dark backgrounds alike.
PALETTE = ["#7c3aed", "#0891b2", "#16a34a", "#d97706", "#dc2626", "#db2777", "#4f46e5", "#65a30d"]
TREND_HEADERS = ["started", "score %", "model · quant", "run", "setting"]


def bars_html(frame: pd.DataFrame, empty: str = "") -> str:
    """Horizontal bars from a chart frame (subject, accuracy %, questions, group, name), best first; the rows
    scroll inside the box past about fifteen of them."""
    if frame is None or frame.empty:
        return f'<div class="eval-bars-empty">{html.escape(empty)}</div>' if empty else ""
    groups = list(dict.fromkeys(frame["group"]))
    colour = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    rows = []
    for r in frame.sort_values(["accuracy %", "subject"], ascending=[False, True]).itertuples(index=False):
        acc, name, full = float(r[1]), html.escape(str(r[0])), html.escape(f"{r[4]} · {r[3]} · {r[2]} items")
        rows.append(
            f'<div class="eval-bar" title="{full}" style="display:grid;grid-template-columns:minmax(6em,38%) 1fr '
            f'3.6em;gap:6px;align-items:center;font-size:0.82rem;line-height:1.5">'
            f'<span style="overflow:hidden;text-overflow:ellipsis;white-space:nowrap">{name}</span>'
            f'<span style="background:rgba(127,127,127,.15);border-radius:3px;height:12px">'
            f'<span style="display:block;height:100%;width:{max(0.0, min(100.0, acc)):.1f}%;border-radius:3px;'
            f'background:{colour[r[3]]}"></span></span><span style="text-align:right">{acc:.1f}%</span></div>')
    legend = " ".join(f'<span style="white-space:nowrap"><span style="display:inline-block;width:10px;height:10px;'
                      f'border-radius:2px;background:{colour[g]}"></span> {html.escape(str(g))}</span>'
                      for g in groups)
    return (f'<div class="eval-bars"><div style="font-size:0.8rem;margin-bottom:4px">{len(rows)} '
            f'{"subjects" if len(rows) != 1 else "subject"}, best first · {legend}</div>'
            f'<div style="max-height:460px;overflow-y:auto;padding-right:4px">{"".join(rows)}</div></div>')


def trend_frame(store: RunStore, benchmark: str) -> pd.DataFrame:
    """Every finished run of `benchmark` with a score, oldest first: when, score %, model · quant, run, setting."""
    rows = []
    for r in reversed(store.runs(benchmark, limit=1000)):
        o = (r.summary or {}).get("overall", {})
        score = o.get("pass@1", o.get("accuracy"))
        if r.status != "finished" or score is None:
            continue
        rows.append([pd.Timestamp(r.started_at, unit="s"), round(100 * score, 1), f"{r.model} · {r.quant or '—'}",
                     r.id, setting(r)])
    if not rows:
        return trend_frame_empty()
    frame = pd.DataFrame(rows, columns=TREND_HEADERS)
    frame["started"] = pd.to_datetime(frame["started"])
    frame["score %"] = frame["score %"].astype(float)
    return frame


def trend_frame_empty() -> pd.DataFrame:
    # Typed columns: the plot reads its axes' types from the first value it gets, even an empty one.
    return pd.DataFrame({"started": pd.Series(dtype="datetime64[ns]"), "score %": pd.Series(dtype=float),
                         "model · quant": pd.Series(dtype=str), "run": pd.Series(dtype=str),
                         "setting": pd.Series(dtype=str)})


def trend_colours(frame: pd.DataFrame) -> dict[str, str]:
    """A colour for each model · quant of a trend frame, in the order of their names."""
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(sorted(frame["model · quant"].unique()))}


def setting(run: Run) -> str:
    shots = "" if run.shots is None else f" {run.shots}-shot"
    return f"{run.subset or 'whole'} {run.mode}{shots}"


def trend_note(frame: pd.DataFrame, benchmark: str) -> str:
    if frame.empty:
        return f"No finished {benchmark} run yet: its runs appear here over time, one line per model and quantization."
    series = frame["model · quant"].nunique()
    first = time.strftime("%Y-%m-%d", time.localtime(frame["started"].iloc[0].timestamp()))
    return (f"{len(frame)} finished {benchmark} run{'s' * (len(frame) != 1)} since {first}, {series} "
            f"model{'s' * (series != 1)} · quantization{'s' * (series != 1)}; hover a point for its run and setting.")
