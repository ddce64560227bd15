"""The Compare tab's panes: one editor per variant (name, system prompt, template, sampling) and one
output column per pane (label, streamed reply, stats), and the conversions between form values and
`lab.compare.Variant`s. The tab's callbacks live in `lab.ui.compare_tab`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from lab.chat.conversation import format_stats
from lab.compare import MAX_PANES, SLOT, Comparison, Variant, parse_variants
from lab.compare.variants import AS_LOADED
from lab.models import QUANTS, REGISTRY
from lab.ui.common import whole_number

FIELDS = ("name", "model", "quant", "preset", "system", "template", "max_new_tokens", "temperature", "top_p", "top_k",
          "repetition_penalty", "seed")
CUSTOM = "Custom"
QUANT_CHOICES = [(AS_LOADED, AS_LOADED)] + [(q, q) for q in QUANTS]
# What a fresh page offers: four different system prompts, so that Run compares something at once.
STARTERS = [("A", "Qwen default", 0.7), ("B", "Concise", 0.7), ("C", "简洁回答", 0.7), ("D", "Qwen default", 0.0)]


@dataclass
class Editor:
    column: gr.Column
    fields: list  # components in FIELDS order
    preset: gr.Dropdown
    system: gr.Textbox


@dataclass
class Output:
    column: gr.Column
    label: gr.Markdown
    text: gr.Markdown
    stats: gr.Markdown


def build_editors(presets: dict[str, str], shown: int) -> list[Editor]:
    editors = []
    with gr.Row(equal_height=False):
        for i in range(MAX_PANES):
            name, preset, temp = STARTERS[i]
            preset = preset if preset in presets else next(iter(presets))
            with gr.Column(visible=i < shown, min_width=240, elem_id=f"cmp-variant-{i}") as column:
                f = [gr.Textbox(name, label=f"Variant {i + 1} name", max_lines=1, elem_id=f"cmp-name-{i}")]
                with gr.Row(equal_height=True):
                    f.append(gr.Dropdown([AS_LOADED, *REGISTRY], value=AS_LOADED, allow_custom_value=True,
                                         label="Model", info="as loaded: the page's; or a name, Hub id, path",
                                         min_width=140, elem_id=f"cmp-model-{i}"))
                    f.append(gr.Dropdown(QUANT_CHOICES, value=AS_LOADED, label="Quantization",
                                         info="as loaded, or auto: the model's default", min_width=110,
                                         elem_id=f"cmp-quant-{i}"))
                f.append(gr.Dropdown([*presets, CUSTOM], value=preset, label="System-prompt preset",
                                     elem_id=f"cmp-preset-{i}"))
                f.append(gr.Textbox(presets[preset], label="System prompt (editable)", lines=3, max_lines=12,
                                    elem_id=f"cmp-system-{i}"))
                f.append(gr.Textbox(SLOT, label="Template ({input} is replaced by the input)", lines=2,
                                    max_lines=12, elem_id=f"cmp-template-{i}"))
                # Out of the closed panel: the longest reply sets how long the batch takes.
                f.append(gr.Slider(16, 8192, value=512, step=16, label="Max new tokens (the longest sets the time)",
                                   elem_id=f"cmp-max-new-{i}"))
                # Not a closed gr.Accordion: Gradio draws a closed accordion's children only when it opens, then a
                # frame or more later sets each one's starting value again, over a seed typed in between (on a
                # loaded machine, hundreds of ms). This panel is drawn with the tab; the button only shows it.
                gr.Button("Sampling", size="sm", elem_id=f"cmp-sampling-btn-{i}", elem_classes=["cmp-sampling-btn"])
                with gr.Column(elem_id=f"cmp-sampling-{i}", elem_classes=["cmp-sampling"]):
                    f.append(gr.Slider(0, 2, value=temp, step=0.05, label="Temperature (0 = greedy)",
                                       elem_id=f"cmp-temperature-{i}"))
                    f.append(gr.Slider(0.05, 1, value=0.8, step=0.05, label="Top-p", elem_id=f"cmp-top-p-{i}"))
                    f.append(gr.Slider(0, 200, value=20, step=1, label="Top-k (0 = off)", elem_id=f"cmp-top-k-{i}"))
                    f.append(gr.Slider(0.8, 2, value=1.05, step=0.01, label="Repetition penalty",
                                       elem_id=f"cmp-rep-{i}"))
                    f.append(whole_number(-1, precision=0, label="Seed (-1 = a fresh one each run)",
                                       elem_id=f"cmp-seed-{i}"))
            editors.append(Editor(column, f, f[FIELDS.index("preset")], f[FIELDS.index("system")]))
    return editors


def build_outputs(shown: int) -> list[Output]:
    outputs = []
    with gr.Row(equal_height=False):
        for i in range(MAX_PANES):
            with gr.Column(visible=i < shown, min_width=240, elem_id=f"cmp-pane-{i}") as column:
                label = gr.Markdown(blank_labels()[i], elem_id=f"cmp-label-{i}")
                text = gr.Markdown("", elem_id=f"cmp-out-{i}", container=True, min_height=160, max_height=480,
                                   buttons=["copy"])
                stats = gr.Markdown("", elem_id=f"cmp-stats-{i}", elem_classes=["cmp-stats"])
            outputs.append(Output(column, label, text, stats))
    return outputs


def variants_from_form(n: int | str, values) -> list[Variant]:
    """The first n panes' variants from the flat list of every editor's FIELDS values."""
    n = int(n)
    rows = [dict(zip(FIELDS, values[i * len(FIELDS):(i + 1) * len(FIELDS)])) for i in range(n)]
    for r in rows:
        if r["preset"] == CUSTOM:
            r["preset"] = None
    return parse_variants(rows)


def form_values(variants: list[Variant], presets: dict[str, str]) -> list:
    """Every editor's FIELDS values for these variants (the panes past them keep their starters)."""
    out = []
    for v in variants:
        preset = v.preset if v.preset in presets else CUSTOM
        out += [v.name, v.model or AS_LOADED, v.quant or AS_LOADED, preset, v.system, v.template, v.max_new_tokens,
                v.temperature, v.top_p, v.top_k, v.repetition_penalty, -1 if v.seed is None else v.seed]
    return out + [gr.skip()] * (len(FIELDS) * (MAX_PANES - len(variants)))


def cost_line(n: int | str, values) -> str:
    """What Run all will cost, read from the form before it runs: each shown variant's max new tokens, their sum,
    and the longest, which sets the time (every row of a batch decodes until the longest is done)."""
    n = int(n)
    rows = [dict(zip(FIELDS, values[i * len(FIELDS):(i + 1) * len(FIELDS)])) for i in range(n)]
    try:
        longest = [int(float(r["max_new_tokens"])) for r in rows]
    except (TypeError, ValueError):
        return ""  # a box half typed: the line comes back with the number
    named = any(r[k] not in (None, "", AS_LOADED) for r in rows for k in ("model", "quant"))
    how = "one batch per model, the models in turn" if named else "in one batch"
    return (f"**Run all:** {n} variants {how}, up to {sum(longest):,} new tokens in all "
            f"({' + '.join(f'{x:,}' for x in longest)}); the longest, {max(longest):,}, sets the time.")


def visibility(n: int | str) -> list:
    n = int(n)
    return [gr.Column(visible=i < n) for i in range(MAX_PANES)]


# ---- what each output pane shows -----------------------------------------------------------------------
def order_of(n: int, comparison: Comparison | None) -> list[int]:
    return (comparison.order if comparison and comparison.order else list(range(n)))


def plain_labels(comparison: Comparison, revealed: bool) -> list[str]:
    """Each pane's name: the variant's, or "Response k" until a blind vote reveals it."""
    out = []
    for pane, idx in enumerate(order_of(len(comparison.variants), comparison)):
        name = comparison.variants[idx].name
        if comparison.order is None:
            out.append(name)
        else:
            out.append(f"Response {pane + 1} ({name})" if revealed else f"Response {pane + 1}")
    return out


def ran_on(comparison: Comparison, idx: int) -> str:
    """The model a variant ran on (or asks for, before it has run), when the comparison spans models."""
    v = comparison.variants[idx]
    info = comparison.models[idx] if comparison.models else None
    if info:
        return f"{info['name']} · {info['quant']}"
    if not v.names_model:
        return "the loaded model"
    return f"{v.model or 'the loaded model'} · {v.quant or 'auto'}"


def cost(comparison: Comparison, idx: int, spans: bool) -> str:
    """What a pane costs, shown on it: its model (when the comparison spans models) and its max new tokens."""
    v = comparison.variants[idx]
    where = f"{ran_on(comparison, idx)} · " if spans else ""
    return f"<small>{html.escape(where)}up to {v.max_new_tokens:,} new tokens</small>"


def labels(comparison: Comparison, revealed: bool, spans: bool = False) -> list[str]:
    """Markdown of each pane's label with its cost; blind panes show neither until the vote reveals them, and
    then the fingerprint and the pick."""
    out = []
    for pane, (idx, name) in enumerate(zip(order_of(len(comparison.variants), comparison),
                                           plain_labels(comparison, revealed))):
        if comparison.order is None:
            out.append(f"**{pane + 1} · {name}**  \n{cost(comparison, idx, spans)}")
        elif not revealed:
            out.append(f"**{name}**")
        else:
            won = " — **your pick**" if comparison.voted and comparison.vote == idx else ""
            out.append(f"**{name}** `#{comparison.variants[idx].fingerprint}`{won}  \n"
                       f"{cost(comparison, idx, spans)}")
    return pad(out)


def blank_labels() -> list[str]:
    """Each pane's label before any comparison."""
    return [f"**Pane {i + 1}**" for i in range(MAX_PANES)]


def took(comparison: Comparison, seconds: float) -> str:
    """What a finished run took: its time and the tokens it decoded (and read), all panes together."""
    stats = [s for s in comparison.stats if s]
    new, read = sum(s["completion_tokens"] for s in stats), sum(s["prompt_tokens"] for s in stats)
    return f"{seconds:.1f} s: {new:,} new tokens in all, {read:,} prompt tokens read."


def stats_lines(comparison: Comparison, hidden: bool) -> list[str]:
    out = []
    for idx in order_of(len(comparison.variants), comparison):
        s = comparison.stats[idx]
        out.append("*stats hidden until you vote*" if hidden else (format_stats(s) if s else ""))
    return pad(out)


def pad(values: list, fill="") -> list:
    return values + [fill] * (MAX_PANES - len(values))
