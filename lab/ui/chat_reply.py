"""The Chat tab's replies: every setting checked before anything changes, the reply streamed into the
conversation, and, when it fails, the conversation put back exactly as it was with the reason as one sentence
on the stats line (never a locked component). Also how the conversation is drawn: the stats under every reply,
the turns the model did not see marked as dropped, the thumbs as given.

Gradio-free apart from the updates it returns; chat_tab.py wires these handlers to the page.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time

import gradio as gr

from lab.chat.conversation import (
    FINISH,
    Conversation,
    dropped_note,
    fit_to_context,
    format_stats,
    with_system,
)
from lab.errors import LabError
from lab.interface import ReplyClock, ReplyStats, SamplingParams, lone_surrogate
from lab.models.manager import ModelManager
from lab.ui.chat_tools import ReplyShape, display
from lab.ui.common import STREAM_INTERVAL_S, SessionCancels, form_number, notice

log = logging.getLogger(__name__)
MIN_PROMPT = 64  # the slider's maximum leaves at least this much of the context for the prompt
LABELS = {"temperature": "Temperature", "top_p": "Top-p", "top_k": "Top-k", "repetition_penalty": "Repetition penalty",
          "max_new_tokens": "Max new tokens"}
DROPPED = "⤫ dropped to fit the context: the model did not see this for the last reply"
FEEDBACK = {"up": "Like", "down": "Dislike"}


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def max_new_limit(context_length: int) -> int:
    """The max-new-tokens slider's maximum for a model: its context less room for a prompt, in steps of 16."""
    return max(16, (context_length - MIN_PROMPT) // 16 * 16)


def checked(values, context_length: int, model_name: str) -> tuple[SamplingParams, ReplyShape]:
    """The sampling settings, JSON mode and tools of the form, each checked (LabError naming the field)."""
    *numbers, seed, json_mode, schema, tools = values
    kw = {field: form_number(field, v, LABELS[field]) for field, v in zip(LABELS, numbers)}
    if kw["max_new_tokens"] >= context_length:
        raise LabError(f"Max new tokens ({kw['max_new_tokens']:,}) must be smaller than {model_name}'s context of "
                       f"{context_length:,} tokens; lower it to {max_new_limit(context_length):,} or less.")
    fresh = seed is None or seed == "" or (isinstance(seed, (int, float)) and seed == -1)
    kw["seed"] = None if fresh else form_number("seed", seed, "Seed (-1 for a new one each reply)")
    shape = ReplyShape.from_ui(json_mode, schema, tools)  # a bad schema or tool list ends here, before decoding
    return SamplingParams(**kw, response_format=shape.response_format), shape


def stats_rows(conv: Conversation) -> list[list]:
    rows = []
    for n, (_, s) in enumerate(sorted(conv.stats.items()), start=1):
        if "prompt_tokens" not in s:
            continue
        rows.append([
            n, s["prompt_tokens"], s["completion_tokens"],
            "n/a" if s.get("ttft_s") is None else round(s["ttft_s"] * 1000),
            "n/a" if s.get("decode_tokens_per_s") is None else round(s["decode_tokens_per_s"], 1),
            "n/a" if s.get("gpu_mem_peak_gib") is None else round(s["gpu_mem_peak_gib"], 2),
            s["seed"], FINISH.get(s["finish_reason"], s["finish_reason"]),
        ])
    return rows


def stats_line(conv: Conversation, context_length: int | None) -> str:
    """The line under the conversation: the last reply's stats (empty when there is none)."""
    last = max((i for i, s in conv.stats.items() if "prompt_tokens" in s), default=None)
    if last is None:
        return ""
    s = conv.stats[last]
    line = format_stats(s)
    if context_length:
        line += f" · context {s['prompt_tokens'] + s['completion_tokens']:,}/{context_length:,}"
    label = conv.version_label(last)
    return line + (f" · version {label}" if label else "")


def show(conv: Conversation, partial: str | None = None):
    """The chatbot's value: each message, the stats under every reply, dropped turns marked, thumbs as given."""
    messages = conv.messages + ([{"role": "assistant", "content": partial}] if partial is not None else [])
    out, dropped, feedback = display(messages), conv.dropped_indices(), []
    for i, item in enumerate(out):
        text = item["content"]["text"]
        if i in dropped:
            text = f'<span class="dropped-mark">{DROPPED}</span>\n\n{text}'
        s = conv.stats.get(i, {}) if partial is None or i < len(conv.messages) else {}
        if "prompt_tokens" in s:
            text += f'\n\n<span class="reply-stat">{format_stats({**s, "dropped_turns": 0})}</span>'
        item["content"]["text"] = text
        if item["role"] == "assistant":
            feedback.append(FEEDBACK.get(s.get("rating")))
    # a plain list while nothing is rated, so /send and friends hand programs the messages as before
    return gr.Chatbot(value=out, feedback_value=feedback) if any(feedback) else out


class Replies:
    """Streams replies for the page's events; each returns (chatbot, conversation, message box, stats line,
    stats table), the outputs the events share."""

    def __init__(self, manager: ModelManager, cancels: SessionCancels) -> None:
        self.manager, self.cancels = manager, cancels

    def check(self, values) -> tuple[SamplingParams, ReplyShape]:
        info = self.manager.model.info
        return checked(values, info.context_length, info.name)

    def line(self, conv: Conversation) -> str:
        return stats_line(conv, self.manager.model.info.context_length if self.manager.loaded else None)

    def chunks(self, conv: Conversation, system_prompt: str, params: SamplingParams, shape: ReplyShape, key: str):
        """A reply to the conversation as it stands (its last message is the user's or a tool result): yields the
        text so far with the status line (at most every STREAM_INTERVAL_S); at the end the reply joins `conv`."""
        model = self.manager.model
        if lone_surrogate([system_prompt, conv.messages]):
            raise LabError("The conversation holds text that is not valid Unicode (a lone surrogate); remove it.")
        tools = shape.tools or None
        fitted = fit_to_context(system_prompt, conv.messages, lambda m: model.count_chat_tokens(m, tools),
                                model.info.context_length, params.max_new_tokens)
        status = "generating… · Esc stops"
        if fitted.dropped_turns:
            status = f"generating… ({dropped_note(fitted.dropped_turns)}) · Esc stops"
        event = self.cancels.start(key)
        text, stats, last = "", None, 0.0
        # closing() ends generation at once if the page goes away mid-reply (Gradio closes this generator)
        try:
            with contextlib.closing(model.stream_chat(fitted.messages, params, event, tools=tools)) as stream:
                for chunk in stream:
                    if chunk.waiting is not None:  # every row of the running batch is taken: say where it stands
                        yield text, f"waiting for a free row: {ordinal(chunk.waiting)} in line · Esc stops"
                        continue
                    text += chunk.text
                    stats = chunk.stats or stats
                    if time.monotonic() - last > STREAM_INTERVAL_S:
                        last = time.monotonic()
                        yield text, status
        finally:
            self.cancels.finish(key, event)
        assert isinstance(stats, ReplyStats), "stream_chat ends with a chunk carrying stats"
        reply, extra = shape.finish(text)
        conv.add_reply(text, stats, params, fitted.dropped_turns, message=reply, **extra)

    def stream(self, conv: Conversation, system_prompt: str, params: SamplingParams, shape: ReplyShape, key: str):
        """`chunks` as the page's updates, ending with the reply and its stats."""
        for text, status in self.chunks(conv, system_prompt, params, shape, key):
            yield show(conv, text), conv, gr.skip(), status, gr.skip()
        yield show(conv), conv, gr.skip(), self.line(conv), stats_rows(conv)

    def guarded(self, conv: Conversation, change, reply, box_after_failure=gr.skip()):
        """Apply `change(conv)`, then stream `reply(conv)`'s updates; on a failure, before or during the reply,
        the conversation goes back to what it was, the message box gets `box_after_failure` and the stats line
        the reason."""
        before = copy.deepcopy(conv)
        try:
            first = change(conv)
            if first is not None:
                yield first
            yield from reply(conv)
        except Exception as e:  # noqa: BLE001 - whatever failed, the conversation is put back as it was
            if not isinstance(e, LabError):
                log.exception("a reply failed")
            conv.__dict__.update(before.__dict__)
            reason = str(e) if isinstance(e, LabError) else f"The reply failed ({type(e).__name__}: {e})."
            yield show(conv), conv, box_after_failure, notice(reason), stats_rows(conv)

    def continue_text(self, conv: Conversation, system_prompt: str, params: SamplingParams, key: str):
        """Continue: the model writes on from the end of the last reply (its chat template's prompt, cut where
        that reply's text ends, so no new turn begins)."""
        model = self.manager.model
        last = conv.messages[-1] if conv.messages else None
        if not last or last["role"] != "assistant" or last.get("tool_calls") or not (last.get("content") or "").strip():
            raise LabError("There is no reply to continue yet; Continue extends the model's last reply.")
        if params.response_format:
            raise LabError("Continue writes plain text; turn JSON mode off to continue this reply.")
        rendered = model.render(with_system(system_prompt, conv.messages), add_generation_prompt=False)
        cut = rendered.rfind(last["content"])
        if cut < 0:
            raise LabError("The chat template rewrites this reply, so it cannot be continued; press Regenerate.")
        prompt = rendered[:cut + len(last["content"])]
        used = model.count_tokens(prompt)
        if used + params.max_new_tokens > model.info.context_length:
            raise LabError(f"The conversation ({used:,} tokens) plus max new tokens ({params.max_new_tokens:,}) "
                           f"exceeds the model's context of {model.info.context_length:,}; lower max new tokens.")
        yield show(conv), conv, gr.skip(), "continuing… · Esc stops", gr.skip()
        event = self.cancels.start(key)
        clock = ReplyClock()
        try:
            done = model.generate([prompt], params, cancel=event)[0]
        finally:
            self.cancels.finish(key, event)
        clock.tick(done.completion_tokens)
        stats = clock.stats(done.prompt_tokens, "cancelled" if event.is_set() else done.finish_reason, params.seed,
                            completion_tokens=done.completion_tokens)
        conv.extend_reply(done.text, stats)
        yield show(conv), conv, gr.skip(), self.line(conv), stats_rows(conv)


__all__ = ["Replies", "checked", "show", "stats_rows", "stats_line", "max_new_limit"]
