"""JSON mode and tool calling in the Chat tab: the settings, how calls and results show in the
conversation, and the panel under it with the parsed object or the calls awaiting results.

Kept apart from chat_tab.py so that file stays about the conversation itself; nothing here talks
to the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import gradio as gr

from lab.chat.conversation import Conversation
from lab.chat.json_mode import response_format, validate
from lab.chat.presets import tool_sets
from lab.chat.tools import ToolCall, assistant_message, dump_tools, format_call, load_tools, parse_tool_calls
from lab.errors import LabError

NO_TOOLS = "No tools"
CUSTOM_TOOLS = "Custom"


@dataclass
class ReplyShape:
    """What a reply is asked for besides text: a response format, and tools the model may call."""

    response_format: dict | None = None
    tools: list[dict] = field(default_factory=list)

    @classmethod
    def from_ui(cls, json_mode: bool, schema_text: str | None, tools_text: str | None) -> "ReplyShape":
        fmt = response_format(bool(json_mode), schema_text)
        tools = load_tools(tools_text or "")
        if fmt and tools:
            raise LabError("JSON mode constrains the whole reply, so the model cannot call tools while it is on; "
                           "turn one of them off.")
        return cls(fmt, tools)

    def finish(self, text: str) -> tuple[dict | None, dict]:
        """The reply's message (with tool calls, when it made any) and what goes with its stats."""
        extra: dict = {}
        message = None
        if self.response_format:
            check = validate(text, self.response_format)
            extra["json"] = {"parses": check.parses, "valid": check.valid, "errors": check.errors,
                             "parsed": check.parsed, "summary": check.summary()}
        if self.tools:
            parsed = parse_tool_calls(text, self.tools)
            if parsed.calls:
                message = assistant_message(parsed)
                extra["raw"] = text  # the reply as the model wrote it, <tool_call> blocks included
            if parsed.problems:
                extra["tool_problems"] = parsed.problems
        return message, extra


def call_of(call: dict) -> ToolCall:
    fn = call.get("function", call)
    return ToolCall(fn["name"], fn.get("arguments") or {}, raw="", id=call.get("id", ""))


def display(messages: list[dict]) -> list[dict]:
    """Chatbot messages, one per conversation message (so an edit's index is the conversation's).

    Text parts go as {"type": "text"} so Gradio shows them verbatim (a bare string is dedented).
    A reply's tool calls follow its text as code; a tool result shows as a collapsible note."""
    out = []
    for m in messages:
        text = m.get("content") or ""
        if m.get("tool_calls"):
            calls = "\n".join(format_call(call_of(c)) for c in m["tool_calls"])
            text = (text + "\n\n" if text else "") + f"🔧 Tool call{'s' if len(m['tool_calls']) > 1 else ''}:\n" \
                f"```python\n{calls}\n```"
        item = {"role": "assistant" if m["role"] == "tool" else m["role"], "content": {"type": "text", "text": text}}
        if m["role"] == "tool":
            item["metadata"] = {"title": f"📎 Result of {m['name']}" if m.get("name") else "📎 Tool result"}
        out.append(item)
    return out


def build_settings():
    """The side panel: JSON mode, an optional schema, and the tools on offer."""
    sets = tool_sets()
    with gr.Accordion("JSON mode and tools", open=False, elem_id="structured-settings"):
        json_mode = gr.Checkbox(False, label="JSON mode: the reply always parses", elem_id="json-mode",
                                info="decoding is constrained to valid JSON (and to the schema, if any)")
        schema = gr.Code("", language="json", label="JSON Schema (optional)", lines=4, elem_id="json-schema")
        tool_set = gr.Dropdown([NO_TOOLS, *sets, CUSTOM_TOOLS], value=NO_TOOLS, label="Tools", elem_id="tool-set",
                               info="passed to the chat template; the model answers with <tool_call> blocks")
        tools = gr.Code("", language="json", label="Tools (OpenAI function format, editable)", lines=6,
                        elem_id="tools-box")
    tool_set.input(lambda name: dump_tools(sets[name]) if name in sets else ("" if name == NO_TOOLS else gr.skip()),
                   tool_set, tools, api_visibility="private")
    tools.input(lambda text: CUSTOM_TOOLS if text.strip() else NO_TOOLS, tools, tool_set, api_visibility="private")
    return json_mode, schema, tools


def build_panels():
    """Under the conversation: the parsed JSON reply, or the calls that wait for results."""
    with gr.Group(visible=False, elem_id="json-panel") as json_panel:
        json_check = gr.Markdown("", elem_id="json-check")
        json_view = gr.JSON(label="Parsed reply", elem_id="json-view")
    with gr.Group(visible=False, elem_id="tool-panel") as tool_panel:
        calls_md = gr.Markdown("", elem_id="tool-calls")
        with gr.Row():
            result = gr.Textbox(label="Tool result", placeholder='What the function returned, e.g. {"temperature": 21}',
                                lines=1, max_lines=8, scale=6, elem_id="tool-result")
            send_result = gr.Button("Send result", scale=1, min_width=120, elem_id="tool-send")
    return json_panel, json_check, json_view, tool_panel, calls_md, result, send_result


def panels(conv: Conversation):
    """What the panels show for the conversation's last reply."""
    last = len(conv.messages) - 1
    while last >= 0 and conv.messages[last]["role"] == "tool":
        last -= 1
    stats = conv.stats.get(last, {}) if last >= 0 and conv.messages[last]["role"] == "assistant" else {}
    check = stats.get("json")
    json_updates = (gr.Group(visible=bool(check)), check["summary"] if check else "",
                    check["parsed"] if check and check["parses"] else None)
    calls = conv.messages[last].get("tool_calls") if stats else None
    problems = stats.get("tool_problems") or []
    if not calls and not problems:
        return (*json_updates, gr.Group(visible=False), "")
    pending = conv.pending_calls()
    lines = [f"**The model called {len(calls)} tool{'s' if len(calls or []) != 1 else ''}.**"] if calls else []
    for i, c in enumerate(calls or []):
        call = call_of(c)
        mark = "⏳" if i >= len(calls) - len(pending) else "✓"
        lines.append(f"{mark} `{call.name}` with arguments `{json.dumps(call.arguments, ensure_ascii=False)}`")
    lines += [f"⚠️ {p}" for p in problems]
    if pending:
        lines.append(f"Enter the result of `{call_of(pending[0]).name}` below; the model continues once every call "
                     "has its result.")
    return (*json_updates, gr.Group(visible=True), "\n\n".join(lines))
