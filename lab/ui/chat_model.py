"""The Chat tab's model panel: which model runs, switching it with feedback while it loads, the models already in
the Hugging Face cache, and messages written for the page (a CLI flag's name becomes the box's name).

/load_model stays an API endpoint that raises the error (a program gets the sentence as its exception); the
page's Load button writes it beside the button instead, and puts the box back to the model still running.
"""

from __future__ import annotations

import re

import gradio as gr

from lab.errors import LabError
from lab.models.manager import LoadRequest, ModelManager
from lab.models.registry import QUANTS, REGISTRY
from lab.ui.chat_reply import max_new_limit
from lab.ui.common import form_number, notice

# A CLI flag in a model layer's sentence, and what the page calls it.
FLAGS = [(r"--context\b", "Context tokens"), (r"--quant\b", "Quantization"), (r"--model\s+", "model "),
         (r"--gguf-file\b", "the GGUF file name"), (r"--device\b", "device")]


def for_the_page(sentence: str) -> str:
    for flag, name in FLAGS:
        sentence = re.sub(flag, name, sentence)
    return sentence


def cached_models() -> list[str]:
    """Models in the Hugging Face cache (newest first), so they load without a download."""
    try:
        from huggingface_hub import scan_cache_dir

        repos = [r for r in scan_cache_dir().repos if r.repo_type == "model"]
    except Exception:  # noqa: BLE001 - no cache yet, or one the library cannot read: no suggestions
        return []
    return [r.repo_id for r in sorted(repos, key=lambda r: -r.last_modified)]


class ModelPanel:
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def markdown(self) -> str:
        if not self.manager.loaded:
            return "**No model loaded.**"
        info = self.manager.model.info
        return "\n\n".join([f"**Model:** {info.summary()}"] + [f"⚠️ {note}" for note in info.notes])

    def running(self) -> str | None:
        return self.manager.model.info.name if self.manager.loaded else None

    def build(self) -> None:
        current = self.manager.request or LoadRequest()
        names = list(dict.fromkeys([*REGISTRY, *cached_models()]))
        with gr.Accordion("Model", open=False, elem_id="model-panel"):
            self.name = gr.Dropdown(names, value=self.running(), allow_custom_value=True, elem_id="model-name",
                                    label="Model (a name, a Hub id, a local folder; cached ones are listed)")
            self.quant = gr.Dropdown(list(QUANTS), value=current.quant, label="Quantization", elem_id="model-quant")
            own = self.manager.model.info.context_length if self.manager.loaded else None
            # a text box, so that empty reads as empty (a number box shows 0), with the model's own as its hint
            self.context = gr.Textbox("" if current.context is None else str(current.context), lines=1,
                                      elem_id="model-context",
                                      label="Context tokens (empty: the model's own; more: YaRN)",
                                      placeholder=f"the model's own ({own:,})" if own else "the model's own")
            self.load_btn = gr.Button("Load", elem_id="load-btn")
            self.note = gr.Markdown("", elem_id="load-note", elem_classes="lab-notice")

    def api_load(self, name: str, quant: str = "auto", context_tokens: float | None = None) -> str:
        """Load another model (name, Hub id or local path; quantization; context tokens, None for the model's
        own). A failure is the error's sentence, and the model that was loaded keeps serving."""
        try:
            self._load(name, quant, context_tokens)
        except LabError as e:
            raise gr.Error(str(e)) from None
        return self.markdown()

    def _load(self, name: str | None, quant: str, context_tokens) -> None:
        if not (name or "").strip():
            raise LabError("Pick or type a model name first (for example tiny-random or Qwen/Qwen2.5-0.5B-Instruct).")
        base = self.manager.request or LoadRequest()
        empty = context_tokens is None or (isinstance(context_tokens, str) and not context_tokens.strip())
        context = None if empty or context_tokens == 0 else form_number("context", context_tokens, "Context tokens")
        self.manager.load(LoadRequest(name.strip(), quant or "auto", base.device, base.double_quant, context))

    def page_load(self, name: str | None, quant: str, context_tokens):
        """The Load button: "Loading…" at once, then the model, or the reason beside the button and the box
        back on the model that still runs. Outputs: info, name box, note, Load button, max-new-tokens slider."""
        yield (gr.skip(), gr.skip(), f"Loading {name or '…'} (this can take a minute)…",
               gr.Button("Loading…", interactive=False), gr.skip())
        try:
            self._load(name, quant, context_tokens)
            note = f"Loaded {self.manager.model.info.name}."
        except LabError as e:
            note = notice(for_the_page(str(e)))
        yield (self.markdown(), gr.Dropdown(value=self.running()), note, gr.Button("Load", interactive=True),
               self.slider())

    def slider(self) -> gr.Slider:
        """Max new tokens' slider as the loaded model allows."""
        if not self.manager.loaded:
            return gr.skip()
        top = max_new_limit(self.manager.model.info.context_length)
        return gr.Slider(maximum=top, info=f"up to {top:,}: {self.manager.model.info.name}'s context less room "
                                           "for the prompt")


__all__ = ["ModelPanel", "for_the_page", "cached_models"]
