"""The Compare tab's panes: one editor per variant (name, system prompt, template, sampling) and one
output column per pane (label, streamed reply, stats), and the conversions between form values and
`lab.compare.Variant`s. The tab's callbacks live in `lab.ui.compare_tab`.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from lab.chat.conversation import format_stats
from lab.compare import MAX_PANES, SLOT, Comparison, Variant, parse_variants
from lab.ui.common import whole_number

FIELDS = ("name", "preset", "system", "template", "temperature", "top_p", "top_k", "repetition_penalty",
          "max_new_tokens", "seed")
CUSTOM = "Custom"
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
                f.append(gr.Dropdown([*presets, CUSTOM], value=preset, label="System-prompt preset",
                                     elem_id=f"cmp-preset-{i}"))
                f.append(gr.Textbox(presets[preset], label="System prompt (editable)", lines=3, max_lines=12,
                                    elem_id=f"cmp-system-{i}"))
                f.append(gr.Textbox(SLOT, label="Template ({input} is replaced by the input)", lines=2,
                                    max_lines=12, elem_id=f"cmp-template-{i}"))
                with gr.Accordion("Sampling", open=False):
                    f.append(gr.Slider(0, 2, value=temp, step=0.05, label="Temperature (0 = greedy)",
                                       elem_id=f"cmp-temperature-{i}"))
                    f.append(gr.Slider(0.05, 1, value=0.8, step=0.05, label="Top-p", elem_id=f"cmp-top-p-{i}"))
                    f.append(gr.Slider(0, 200, value=20, step=1, label="Top-k (0 = off)", elem_id=f"cmp-top-k-{i}"))
                    f.append(gr.Slider(0.8, 2, value=1.05, step=0.01, label="Repetition penalty",
                                       elem_id=f"cmp-rep-{i}"))
                    f.append(gr.Slider(16, 8192, value=512, step=16, label="Max new tokens",
                                       elem_id=f"cmp-max-new-{i}"))
                    f.append(whole_number(-1, precision=0, label="Seed (-1 = none; the first seed given seeds the batch)",
                                       elem_id=f"cmp-seed-{i}"))
            editors.append(Editor(column, f, f[1], f[2]))
    return editors


def build_outputs(shown: int) -> list[Output]:
    outputs = []
    with gr.Row(equal_height=False):
        for i in range(MAX_PANES):
            with gr.Column(visible=i < shown, min_width=240, elem_id=f"cmp-pane-{i}") as column:
                label = gr.Markdown(f"**Pane {i + 1}**", elem_id=f"cmp-label-{i}")
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
        out += [v.name, preset, v.system, v.template, v.temperature, v.top_p, v.top_k, v.repetition_penalty,
                v.max_new_tokens, -1 if v.seed is None else v.seed]
    return out + [gr.skip()] * (len(FIELDS) * (MAX_PANES - len(variants)))


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


def labels(comparison: Comparison, revealed: bool) -> list[str]:
    """Markdown of each pane's label; revealed blind panes also show the fingerprint and the pick."""
    out = []
    for pane, (idx, name) in enumerate(zip(order_of(len(comparison.variants), comparison),
                                           plain_labels(comparison, revealed))):
        if comparison.order is None:
            out.append(f"**{pane + 1} · {name}**")
        elif not revealed:
            out.append(f"**{name}**")
        else:
            won = " — 🏆 your pick" if comparison.voted and comparison.vote == idx else ""
            out.append(f"**{name}** `#{comparison.variants[idx].fingerprint}`{won}")
    return pad(out)


def stats_lines(comparison: Comparison, hidden: bool) -> list[str]:
    out = []
    for idx in order_of(len(comparison.variants), comparison):
        s = comparison.stats[idx]
        out.append("*stats hidden until you vote*" if hidden else (format_stats(s) if s else ""))
    return pad(out)


def pad(values: list, fill="") -> list:
    return values + [fill] * (MAX_PANES - len(values))
