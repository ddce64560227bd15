"""The Evaluate tab's history: every run (a running one with its time left, refreshed while it runs), naming and
deleting runs, and a benchmark's runs over time as a trend of accuracy per model and quantization.

Programs reach it by api_name: `/eval_runs` (the history table), `/eval_rename` (run id, name -> the table),
`/eval_delete` (run id -> the table) and `/eval_trend` (benchmark -> its finished runs over time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gradio as gr
import pandas as pd

from lab.errors import LabError
from lab.ui import eval_charts as charts
from lab.ui import eval_views as views

REFRESH_S = 2.0  # the history while a run of this page goes: its row's count and time left move
# Declined, the confirmation throws: the browser then drops the event, so nothing is deleted and nothing is said (a
# null sent on would read as "no run picked"). No run picked, null goes on and the server says to pick one.
CONFIRM_JS = ("(id) => { if (id && !confirm('Delete run ' + id + ' and all its samples? This cannot be undone.'))"
              " throw new Error('not deleted'); return id; }")


@dataclass
class History:
    table: gr.Dataframe
    name: gr.Textbox
    timer: gr.Timer
    trend_bench: gr.Dropdown
    trend: gr.LinePlot
    trend_note: gr.Markdown


def build_history(store: Callable, names: list[str], past: pd.DataFrame) -> tuple[History, gr.Button, gr.Button,
                                                                                     gr.Button]:
    """The history's and the trend's components; returns them with the refresh, rename and delete buttons, whose
    events `wire` sets up once the run picker exists."""
    with gr.Accordion("Run history", open=True, elem_id="eval-history"):
        with gr.Row(equal_height=True):
            gr.Markdown("Select a row to show that run above and fill the form with its settings; an unfinished "
                        "run can be resumed there. A running run counts up here, with its time left.")
            refresh_btn = gr.Button("Refresh", size="sm", scale=0, min_width=100, elem_id="eval-refresh")
        table = gr.Dataframe(past, interactive=False, max_height=320, label="Runs, newest first",
                             elem_id="eval-runs")
        with gr.Row(equal_height=True):
            name = gr.Textbox(label="Name of the run shown", max_lines=1, scale=3, placeholder="e.g. bf16 5-shot",
                              elem_id="eval-run-name")
            rename_btn = gr.Button("Rename", size="sm", scale=0, min_width=100, elem_id="eval-rename")
            delete_btn = gr.Button("Delete run", size="sm", variant="stop", scale=0, min_width=120,
                                   elem_id="eval-delete")
    timer = gr.Timer(REFRESH_S, active=False)
    with gr.Accordion("Runs over time", open=True, elem_id="eval-trend-box"):
        bench = gr.Dropdown(names, value=names[0], label="Benchmark", elem_id="eval-trend-bench")
        frame, note = trend(store, names[0])
        trend_note = gr.Markdown(note, elem_id="eval-trend-note")
        # no height: given one, the plot fits its chart to it as if it had no label, and the block cuts off the
        # legend that says which line is which model · quant
        plot = gr.LinePlot(frame, x="started", y="score %", color="model · quant", y_lim=[0, 100],
                           tooltip=["run", "setting", "model · quant", "score %"], label="Accuracy per run",
                           color_map=charts.trend_colours(frame), elem_id="eval-trend")
    return History(table, name, timer, bench, plot, trend_note), refresh_btn, rename_btn, delete_btn


def trend(store: Callable, benchmark: str) -> tuple[pd.DataFrame, str]:
    try:
        frame = charts.trend_frame(store(), benchmark)
    except LabError as e:
        return charts.trend_frame_empty(), str(e)
    return frame, charts.trend_note(frame, benchmark)


def recolour(h: History, store: Callable, event) -> None:
    """After `event` has updated the trend's data, its colours, in an event of their own. The plot makes its colour
    scale (a colour per model · quant) only when it draws itself, which a new colour map makes it do; a new value
    alone only swaps its data, so a series it did not hold when drawn would show with no colour at all (invisible).
    Sent with the value, the colour map would have it draw itself with the data it had before."""
    event.then(lambda benchmark: gr.LinePlot(color_map=charts.trend_colours(trend(store, benchmark)[0])),
               h.trend_bench, h.trend, api_visibility="private")


def wire(h: History, store: Callable, refresh_btn, rename_btn, delete_btn, run_dd, run_lists: Callable,
         pickers: list) -> tuple:
    """The history's events; returns the rename and the delete (each with what follows it), so that the view of the
    run shown can follow them."""
    def history() -> pd.DataFrame:
        """Every run, newest first: id, name, benchmark, mode, shots, model, quant, status (a running run with its
        time left), done, score, start."""
        try:
            return views.history_frame(store())
        except LabError as e:
            raise gr.Error(str(e)) from None

    def rename(run_id: str | None, name: str) -> pd.DataFrame:
        """Name a run (empty: clear its name); returns the history."""
        try:
            if not run_id:
                raise LabError("Pick a run first (a row of the history, or the run shown), then rename it.")
            store().rename(run_id, name)
        except LabError as e:
            raise gr.Error(str(e)) from None
        return history()

    def delete(run_id: str | None) -> pd.DataFrame:
        """Delete a run and its samples (not a running one, nor one of a quantization report); returns the history."""
        try:
            if not run_id:
                raise LabError("Pick a run first, then delete it.")
            store().delete(run_id)
        except LabError as e:
            raise gr.Error(str(e)) from None
        gr.Info(f"Run {run_id} and its samples are deleted.")
        return history()

    def show_trend(benchmark: str):
        """A benchmark's finished runs over time (started, score %, model · quant, run, setting) and a note."""
        frame, note = trend(store, benchmark)
        return frame, note

    def name_of(run_id: str | None) -> str:
        try:
            return (store().get(run_id).name or "") if run_id else ""
        except LabError:
            return ""

    lists = [run_dd, *pickers]
    refresh_btn.click(history, None, h.table, api_name="eval_runs").then(run_lists, None, lists,
                                                                          api_visibility="private")
    renamed = rename_btn.click(rename, [run_dd, h.name], h.table, api_name="eval_rename").then(
        run_lists, None, lists, api_visibility="private")
    deleted = delete_btn.click(delete, run_dd, h.table, js=CONFIRM_JS, api_name="eval_delete").success(
        lambda: (gr.Dropdown(value=None), ""), None, [run_dd, h.name], api_visibility="private").then(
        run_lists, None, lists, api_visibility="private")
    h.timer.tick(history, None, h.table, api_visibility="private", queue=False)
    recolour(h, store, h.trend_bench.input(show_trend, h.trend_bench, [h.trend, h.trend_note], api_name="eval_trend"))
    run_dd.change(name_of, run_dd, h.name, api_visibility="private", queue=False)
    return renamed, deleted
