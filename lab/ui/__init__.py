"""The Gradio page: one module per tab; `build_app()` puts them together.

The UI is a leaf: it calls the model manager, `lab.chat`, `lab.compare`, `lab.eval` and the model
interface, and nothing outside `lab/ui` imports Gradio; deleting it leaves every benchmark, the server
and the CLIs running. `common` holds what the tabs share; `page` the title, CSS, head script and the
arguments `launch()` takes (`LAUNCH`).
"""

from __future__ import annotations

import gradio as gr

from lab.models.manager import ModelManager
from lab.ui.chat_tab import build_chat_tab
from lab.ui.compare_tab import build_compare_tab
from lab.ui.eval_tab import build_eval_tab
from lab.ui.page import CSS, LAUNCH, THEME, title

__all__ = ["build_app", "CSS", "THEME", "LAUNCH"]


def build_app(manager: ModelManager) -> gr.Blocks:
    device = manager.model.info.device if manager.loaded else "cpu"
    with gr.Blocks(title="Qwen Lab") as demo:
        gr.Markdown(title(device), elem_id="page-title")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                build_chat_tab(manager, demo)
            with gr.Tab("Compare", id="compare") as compare_tab:
                build_compare_tab(manager, compare_tab)
            with gr.Tab("Evaluate", id="evaluate") as eval_tab:
                build_eval_tab(manager, eval_tab)
    demo.queue(default_concurrency_limit=1)  # one generation at a time per model; others wait in line
    return demo
