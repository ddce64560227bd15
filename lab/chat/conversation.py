"""Conversation logic with no UI in it: building the messages the model sees, fitting them into
the context window, reading sampling parameters, and exporting a conversation.

A conversation is a list of {"role", "content"} messages without the system prompt; the system
prompt is kept apart so that it survives trimming and can be changed between turns.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Callable, Sequence

from lab import __version__
from lab.errors import LabError
from lab.interface import Message, ModelInfo, ReplyStats, SamplingParams

KEPT = ("role", "content", "tool_calls", "name", "tool_call_id")  # what the chat template reads of a message


def with_system(system_prompt: str, history: Sequence[Message]) -> list[Message]:
    """Messages for the chat template. An empty system prompt adds no system turn (Qwen's
    template then inserts its own default one)."""
    head = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    return head + [{k: m[k] for k in KEPT if k in m} for m in history]


ROLES = ("user", "assistant", "tool")


def parse_history(history: object) -> tuple[str | None, list[Message]]:
    """Messages from a program: [{"role", "content"}, ...], content a string or a list of text parts
    (OpenAI and Gradio shapes). A leading system message comes back apart, as the system prompt."""
    if history is None:
        return None, []
    if not isinstance(history, list):
        raise LabError("The history must be a list of messages like {\"role\": \"user\", \"content\": \"Hi\"}.")
    system, out = None, []
    for i, m in enumerate(history):
        role = m.get("role") if isinstance(m, dict) else None
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # text parts: [{"type": "text", "text": "..."}]
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if role == "system" and i == 0 and isinstance(content, str):
            system = content
            continue
        calls = m.get("tool_calls") if isinstance(m, dict) and role == "assistant" else None
        if calls is not None and content is None:
            content = ""  # OpenAI sends null content beside tool calls
        if role not in ROLES or not isinstance(content, str):
            raise LabError(
                f"Message {i + 1} of the history needs a role ({', '.join(ROLES)}, or system first) "
                "and text content."
            )
        message = {"role": role, "content": content}
        if calls:
            message["tool_calls"] = _template_calls(calls, i)
        out.append(message)
    return system, out


def _template_calls(calls: object, i: int) -> list[dict]:
    """Tool calls as the chat template reads them: arguments as an object (OpenAI sends a JSON string)."""
    if not isinstance(calls, list):
        raise LabError(f"Message {i + 1} of the history has tool_calls that are not a list.")
    out = []
    for c in calls:
        fn = c.get("function", c) if isinstance(c, dict) else None
        args = fn.get("arguments", {}) if isinstance(fn, dict) else None
        if isinstance(args, str):
            try:
                args = json.loads(args or "{}")
            except json.JSONDecodeError:
                args = None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(args, dict):
            raise LabError(f"Message {i + 1} of the history has a tool call without a name and object arguments.")
        out.append({"type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


def split_turns(history: Sequence[Message]) -> list[list[Message]]:
    """Group a history into turns, each starting at a user message (replies and tool results follow)."""
    turns: list[list[Message]] = []
    for m in history:
        if m["role"] == "user" or not turns:
            turns.append([])
        turns[-1].append(m)
    return turns


@dataclass
class Fitted:
    messages: list[Message]  # what the model sees, system prompt first
    prompt_tokens: int
    dropped_turns: int


def fit_to_context(system_prompt: str, history: Sequence[Message], count_tokens: Callable[[list[Message]], int],
                   context_length: int, max_new_tokens: int) -> Fitted:
    """Drop the oldest turns until prompt + max_new_tokens fits the context; the system prompt
    and the newest turn are always kept. `count_tokens` counts the rendered prompt."""
    if max_new_tokens >= context_length:
        raise LabError(
            f"Max new tokens ({max_new_tokens:,}) must be smaller than the model's context "
            f"({context_length:,} tokens); lower it."
        )
    turns = split_turns(history)
    dropped = 0
    while True:
        messages = with_system(system_prompt, [m for t in turns for m in t])
        used = count_tokens(messages)
        if used + max_new_tokens <= context_length:
            return Fitted(messages, used, dropped)
        if len(turns) <= 1:
            raise LabError(
                f"The system prompt and your message take {used:,} tokens, which with {max_new_tokens:,} max "
                f"new tokens exceeds the model's context of {context_length:,} tokens; shorten them or lower "
                "max new tokens."
            )
        turns.pop(0)
        dropped += 1


def sampling_from_ui(temperature: float, top_p: float, top_k: float, repetition_penalty: float,
                     max_new_tokens: float, seed: float | None) -> SamplingParams:
    """Sampling parameters from form values; a seed of -1 or empty means a fresh one each reply. SamplingParams
    checks every value by the one rule for numbers (finite, in range, whole where it must be)."""
    try:
        return SamplingParams(
            temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
            max_new_tokens=max_new_tokens, seed=None if seed is None or float(seed) < 0 else seed,
        )
    except (TypeError, ValueError) as e:
        raise LabError(f"A sampling setting is out of range: {e}.") from None


@dataclass
class Conversation:
    """What the Chat tab keeps per visitor: the messages and, per assistant message, its stats (with its rating),
    the earlier versions of a reply that Regenerate replaced, and the saved chat's id and title."""

    messages: list[Message] = field(default_factory=list)
    stats: dict[int, dict] = field(default_factory=dict)  # index of assistant message -> stats + params
    versions: dict[int, list[dict]] = field(default_factory=dict)  # index -> every version {"message", "stats"}
    shown: dict[int, int] = field(default_factory=dict)  # index -> which of its versions the conversation holds
    chat_id: str | None = None  # the saved chat (lab.chat.saved), once it has one
    title: str = ""

    def add_reply(self, text: str, stats: ReplyStats, params: SamplingParams, dropped_turns: int,
                  message: Message | None = None, **extra) -> None:
        """Append the reply (`message` when it carries tool calls) with its stats; `extra` goes with the
        stats (the JSON check, tool-call problems). A reply that replaces a regenerated one becomes its newest
        version."""
        self.messages.append(message or {"role": "assistant", "content": text})
        i = len(self.messages) - 1
        self.stats[i] = {**stats.to_dict(), "dropped_turns": dropped_turns, "params": params.to_dict(), **extra}
        if i in self.versions:
            self.versions[i].append(self._version(i))
            self.shown[i] = len(self.versions[i]) - 1

    def _version(self, i: int) -> dict:
        return {"message": dict(self.messages[i]), "stats": dict(self.stats.get(i, {}))}

    def truncate(self, n: int, keep_versions: bool = False) -> None:
        """Keep the first n messages (and their stats); `keep_versions`: the reply at n is about to be regenerated,
        so its versions so far stay (the one shown among them)."""
        if keep_versions and n < len(self.messages) and self.messages[n]["role"] == "assistant":
            versions = self.versions.setdefault(n, [self._version(n)])
            versions[self.shown.get(n, 0)] = self._version(n)  # a rating given since is kept
        del self.messages[n:]
        self.stats = {i: s for i, s in self.stats.items() if i < n}
        last = n if keep_versions else n - 1
        self.versions = {i: v for i, v in self.versions.items() if i <= last}
        self.shown = {i: k for i, k in self.shown.items() if i in self.versions}

    def all_versions(self, i: int) -> list[dict]:
        """Every version of the reply at i, the one shown as it stands now (rated, continued)."""
        versions = list(self.versions.get(i, []))
        if versions and i < len(self.messages):
            versions[self.shown.get(i, 0)] = self._version(i)
        return versions

    def version_label(self, i: int) -> str:
        """"2/3" for the reply at i shown in its second of three versions; "" with one version."""
        n = len(self.versions.get(i, []))
        return f"{self.shown.get(i, 0) + 1}/{n}" if n > 1 else ""

    def show_version(self, step: int) -> bool:
        """Show the previous (-1) or next (+1) version of the last reply; False when there is none that way."""
        i = len(self.messages) - 1
        versions = self.versions.get(i, [])
        k = self.shown.get(i, 0) + step
        if not 0 <= k < len(versions):
            return False
        versions[self.shown.get(i, 0)] = self._version(i)
        self.messages[i], self.stats[i] = dict(versions[k]["message"]), dict(versions[k]["stats"])
        self.shown[i] = k
        return True

    def rate(self, i: int, rating: str | None) -> None:
        """Thumbs "up" or "down" (None clears it) on the assistant message at i, kept with its stats."""
        if not (0 <= i < len(self.messages)) or self.messages[i]["role"] != "assistant":
            raise LabError("Only the model's replies can be rated.")
        self.stats.setdefault(i, {})["rating"] = rating

    def extend_reply(self, more: str, stats: ReplyStats) -> None:
        """Continue: `more` appended to the last reply; its stats add the new tokens and say how it ended now."""
        i = len(self.messages) - 1
        self.messages[i] = {**self.messages[i], "content": (self.messages[i].get("content") or "") + more}
        old = self.stats.get(i, {})
        self.stats[i] = {**old, "completion_tokens": old.get("completion_tokens", 0) + stats.completion_tokens,
                         "finish_reason": stats.finish_reason, "continued": old.get("continued", 0) + 1}
        if i in self.versions:
            self.versions[i][self.shown.get(i, 0)] = self._version(i)

    def dropped_indices(self) -> set[int]:
        """Messages the model did not see when it wrote the last reply (the oldest turns, dropped to fit)."""
        last = next((i for i in range(len(self.messages) - 1, -1, -1) if i in self.stats), None)
        n = self.stats[last].get("dropped_turns", 0) if last is not None else 0
        out, turn = set(), -1
        for i, m in enumerate(self.messages[:last]):
            turn += m["role"] == "user" or i == 0 and m["role"] != "user"
            if turn < n:
                out.add(i)
        return out

    def last_user_index(self, or_tool: bool = False) -> int | None:
        """The last user message (`or_tool`: or tool result, which the model answers just the same)."""
        roles = ("user", "tool") if or_tool else ("user",)
        return next((i for i in range(len(self.messages) - 1, -1, -1) if self.messages[i]["role"] in roles), None)

    def pending_calls(self) -> list[dict]:
        """The last reply's tool calls that have no result yet, in order."""
        i = next((i for i in range(len(self.messages) - 1, -1, -1) if self.messages[i]["role"] == "assistant"), None)
        if i is None:
            return []
        answered = sum(1 for m in self.messages[i + 1:] if m["role"] == "tool")
        return list(self.messages[i].get("tool_calls") or [])[answered:]


def export_conversation(conv: Conversation, system_prompt: str, params: SamplingParams, info: ModelInfo | None) -> dict:
    """A self-contained record of a chat: messages (with per-reply stats), parameters and model."""
    messages = with_system(system_prompt, conv.messages)
    offset = len(messages) - len(conv.messages)
    for i, s in conv.stats.items():
        messages[i + offset]["stats"] = s
    return {
        "format": "qwen-lab.chat/1",
        "title": conv.title,
        "app_version": __version__,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": info.to_dict() if info else None,
        "system_prompt": system_prompt,
        "parameters": params.to_dict(),
        "messages": messages,
        # earlier replies Regenerate replaced: per message (its index in `messages`), every version, the one shown
        "versions": [{"index": i + offset, "shown": conv.shown.get(i, 0), "versions": conv.all_versions(i)}
                     for i in sorted(conv.versions) if len(conv.versions[i]) > 1],
    }


def export_json(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, indent=2)


FINISH = {"stop": "finished", "length": "hit max new tokens", "cancelled": "stopped"}  # one wording, line and table


def format_stats(stats: dict | ReplyStats) -> str:
    """One line for the page: tokens, time to first token, speed, GPU memory, seed, trimming."""
    s = stats.to_dict() if isinstance(stats, ReplyStats) else stats
    parts = [f"prompt {s['prompt_tokens']:,} tok", f"completion {s['completion_tokens']:,} tok"]
    if s.get("ttft_s") is not None:
        parts.append(f"first token {s['ttft_s'] * 1000:.0f} ms")
    if (s.get("queued_s") or 0) >= 0.05:  # beside others: the wait for a row, inside the first-token time
        parts.append(f"{s['queued_s']:.1f} s of it waiting in line")
    if s.get("decode_tokens_per_s") is not None:
        parts.append(f"{s['decode_tokens_per_s']:.1f} tok/s")
    if s.get("gpu_mem_in_use_gib") is not None:
        parts.append(f"GPU {s['gpu_mem_in_use_gib']:.2f} GiB in use (peak {s['gpu_mem_peak_gib']:.2f})")
    parts.append(f"seed {s['seed']}")
    parts.append(FINISH.get(s["finish_reason"], s["finish_reason"]))
    if s.get("continued"):
        parts.append(f"continued {s['continued']}×")
    if s.get("constraint_s") is not None:
        parts.append(f"JSON mode {s['constraint_s'] * 1000:.0f} ms")
    if s.get("closed_early"):
        parts.append("JSON closed early to fit max new tokens")
    if s.get("dropped_turns"):
        parts.append(dropped_note(s["dropped_turns"]))
    return " · ".join(parts)


def dropped_note(n: int) -> str:
    return f"{n} oldest turn{'s' if n != 1 else ''} dropped to fit the context"
