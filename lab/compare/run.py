"""Running the variants: every variant answers one input in one batched generation (`ChatModel.stream_many`),
every pane growing as its tokens arrive; a finished comparison is a `Comparison`, exported as JSON or
Markdown and recorded with a vote.

    for panes in run_variants(model, "Why is the sky blue?", variants):
        print([p.text for p in panes])
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from lab import __version__
from lab.chat.conversation import format_stats
from lab.compare.variants import SAMPLING, Variant, check_input, parse_variants
from lab.errors import LabError
from lab.interface import ReplyStats


@dataclass
class Pane:
    """One variant's reply so far; `stats` arrives with its last token."""

    text: str = ""
    stats: ReplyStats | None = None


def check_fits(model, user_input: str, variants: Sequence[Variant]) -> None:
    """Each variant's prompt plus its max new tokens within the model's context, else one sentence naming the
    variant and the most it may ask for; checked before anything decodes, so a refused run changes nothing."""
    context = model.info.context_length
    for v in variants:
        used = model.count_chat_tokens(v.messages(user_input))
        if used + v.max_new_tokens > context:
            room = max(0, context - used) // 16 * 16  # the page's slider moves in steps of 16
            raise LabError(f"Variant '{v.name}': its prompt ({used:,} tokens) plus its max new tokens "
                           f"({v.max_new_tokens:,}) is more than {model.info.name}'s context of {context:,} tokens; "
                           f"lower its max new tokens to {room:,} or less.")


def run_variants(model, user_input: str, variants: Sequence[Variant],
                 cancel: threading.Event | None = None) -> Iterator[list[Pane]]:
    """Every variant answers `user_input` in one batched generation; yields the panes after each arrival
    (the same list, updated in place), the last time with every pane's stats."""
    check_input(user_input)
    # Checked variants as they are (Compare across models runs one model's share, maybe one); others checked here.
    variants = list(variants) if all(isinstance(v, Variant) for v in variants) else parse_variants(list(variants))
    panes = [Pane() for _ in variants]
    stream = model.stream_many([v.messages(user_input) for v in variants], [v.params() for v in variants], cancel)
    with contextlib.closing(stream):  # a consumer that leaves early ends the generation at once
        for row, chunk in stream:
            panes[row].text += chunk.text
            panes[row].stats = chunk.stats or panes[row].stats
            yield panes


@dataclass
class Comparison:
    """One input answered by every variant: what the page keeps, exports and records with a vote."""

    input: str
    variants: list[Variant]
    outputs: list[str]
    stats: list[dict | None]
    model: dict | None = None
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    order: list[int] | None = None  # blind mode: the variant shown in each pane, by pane
    vote: int | None = None  # the winning variant's index; None with voted=True is a tie (or both bad)
    voted: bool = False
    bad: bool = False  # the vote said "both are bad" (a tie for the ratings, recorded as said)
    models: list[dict | None] | None = None  # each variant's model (ModelInfo dict) when they differ; else `model`

    @classmethod
    def from_panes(cls, user_input: str, variants: Sequence[Variant], panes: Sequence[Pane], model_info=None,
                   order: Sequence[int] | None = None, models: Sequence | None = None) -> "Comparison":
        return cls(user_input, list(variants), [p.text for p in panes],
                   [p.stats.to_dict() if p.stats else None for p in panes],
                   model_info.to_dict() if model_info else None, order=list(order) if order else None,
                   models=[m.to_dict() if hasattr(m, "to_dict") else m for m in models] if models else None)

    def models_of(self) -> list[dict | None]:
        """The model each variant ran on."""
        return list(self.models) if self.models else [self.model] * len(self.variants)

    @property
    def verdict(self) -> str:
        if not self.voted:
            return "no vote"
        if self.bad:
            return "both are bad"
        return "tie" if self.vote is None else f"{self.variants[self.vote].name} wins"

    def to_dict(self) -> dict:
        return {
            "format": "qwen-lab.compare/1",
            "app_version": __version__,
            "created_at": self.created_at,
            "model": self.model,
            "input": self.input,
            "variants": [{**v.to_dict(), "key": v.key, "output": out, "stats": s, "ran_on": m}
                         for v, out, s, m in zip(self.variants, self.outputs, self.stats, self.models_of())],
            "blind_order": self.order,
            "vote": None if not self.voted else ("both bad" if self.bad else "tie" if self.vote is None
                                                 else self.variants[self.vote].name),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)

    def to_markdown(self) -> str:
        names = list(dict.fromkeys(_ran_on(m) for m in self.models_of()))
        model = ", ".join(names) if names else "unknown model"
        lines = [f"# Comparison of {len(self.variants)} variants", "",
                 f"- model: {model}", f"- time: {self.created_at}", f"- vote: {self.verdict}", "",
                 "## Input", "", _fence(self.input), "", "## Variants", "",
                 "| variant | system prompt | template | " + " | ".join(SAMPLING) + " |",
                 "|" + " --- |" * (3 + len(SAMPLING))]
        for v in self.variants:
            cells = [v.key, v.system or "(none)", v.template] + [str(getattr(v, k)) for k in SAMPLING]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        for v, out, s, m in zip(self.variants, self.outputs, self.stats, self.models_of()):
            lines += ["", f"## {v.name}" + (f" ({_ran_on(m)})" if self.models else ""), ""]
            if s:
                lines += [f"*{format_stats(s)}*", ""]
            lines.append(_fence(out))
        return "\n".join(lines) + "\n"


def _ran_on(info: dict | None) -> str:
    return f"{info.get('name')} · {info.get('quant')}" if info else "unknown model"


def _cell(text: str) -> str:
    return html.escape(text).replace("|", "\\|").replace("\n", "<br>")


def _fence(text: str) -> str:
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"{ticks}text\n{text}\n{ticks}"
