"""Tool calling in Qwen2.5's format: the tools a user offers, and the calls the model makes.

The chat template does the prompt side: given `tools` (OpenAI function format) it lists them in
the system turn and asks for calls as

    <tool_call>
    {"name": "get_current_weather", "arguments": {"location": "北京"}}
    </tool_call>

This module reads such a reply back into calls, builds the messages that carry the calls and
their results into the next turn, and reads the page's tools box. It runs no tool: the user
types each result.

    from lab.chat.tools import parse_tool_calls, assistant_message, tool_message
    parsed = parse_tool_calls(reply, tools)
    history += [assistant_message(parsed), tool_message('{"temperature": 25}')]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from lab.errors import LabError
from lab.interface import TOOL_CALL_CLOSE as CLOSE
from lab.interface import TOOL_CALL_OPEN as OPEN

NAME_RE = re.compile(r"[\w.-]{1,64}")  # \w is Unicode: a Chinese name passes, a space or a quote does not


def _dumps(value) -> str:
    # ensure_ascii=False: the chat template's tojson writes "北京", not "\u5317\u4eac", and a call
    # rendered back must read exactly as the model wrote it.
    return json.dumps(value, ensure_ascii=False)


@dataclass
class ToolCall:
    name: str
    arguments: dict
    raw: str  # the text between <tool_call> and </tool_call>, exactly as the model wrote it
    id: str  # "call_0", "call_1", ... over the reply's well-formed calls, in order

    def to_message_call(self) -> dict:
        """The call as a chat template reads it in an assistant message's `tool_calls`."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def to_openai(self) -> dict:
        """The call in OpenAI's wire format, where the arguments travel as a JSON string."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": _dumps(self.arguments)}}


@dataclass
class ParsedReply:
    content: str  # the reply without its well-formed call blocks; malformed blocks stay, as text
    calls: list[ToolCall] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one sentence per malformed block or unknown function


def _blocks(reply: str):
    """Yield (start, end, body, closed) for each <tool_call> in the reply, in order.

    A block ends at the next </tool_call>; when another <tool_call> or the end of the reply comes
    first, it is unclosed (a reply cut by max_new_tokens ends that way) and runs up to that point."""
    pos = reply.find(OPEN)
    while pos >= 0:
        body_start = pos + len(OPEN)
        close = reply.find(CLOSE, body_start)
        again = reply.find(OPEN, body_start)
        if close >= 0 and (again < 0 or close < again):
            yield pos, close + len(CLOSE), reply[body_start:close], True
        else:
            end = again if again >= 0 else len(reply)
            yield pos, end, reply[body_start:end], False
        pos = again


def _read_call(body: str, n: int) -> tuple[str, dict] | str:
    """(name, arguments) from one block's text, or the sentence that says why it is not a call."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        return f"Tool call {n} is not valid JSON ({e.msg} at char {e.pos}); shown as text."
    if not isinstance(data, dict):
        return f"Tool call {n} is not a JSON object with \"name\" and \"arguments\"; shown as text."
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        return f"Tool call {n} has no \"name\"; shown as text."
    args = data.get("arguments", {})  # a function without parameters may be called without them
    if isinstance(args, str):  # some models send OpenAI's wire format: the object as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return f"Tool call {n} has \"arguments\" as a string that is not JSON; shown as text."
    if not isinstance(args, dict):
        return f"Tool call {n} has \"arguments\" that are not a JSON object; shown as text."
    return name.strip(), args


def _tool_names(tools: list[dict]) -> list[str]:
    """Function names from tools in either format (OpenAI's or bare)."""
    names = []
    for t in tools:
        fn = t.get("function", t) if isinstance(t, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.append(fn["name"])
    return names


def parse_tool_calls(reply: str, tools: list[dict] | None = None) -> ParsedReply:
    """Split a reply into its text and its <tool_call> blocks.

    A malformed block is not a call: it stays in the text and gets one problem sentence. With
    `tools`, a call to a function not among them is still a call, with a problem sentence."""
    known = _tool_names(tools) if tools is not None else None
    kept, calls, problems = [], [], []
    last = 0
    for n, (start, end, body, closed) in enumerate(_blocks(reply), start=1):
        if not closed and end < len(reply):
            problems.append(f"Tool call {n} has no {CLOSE} before the next {OPEN}; shown as text.")
            continue
        if not closed:
            problems.append(f"Tool call {n} is cut off before its {CLOSE} (the reply may have hit the token limit); "
                            "shown as text.")
            continue
        read = _read_call(body.strip(), n)
        if isinstance(read, str):
            problems.append(read)
            continue
        name, args = read
        if known is not None and name not in known:
            offered = f"the tools are {', '.join(known)}" if known else "no tools were offered"
            problems.append(f"Tool call {n} calls unknown function '{name}'; {offered}.")
        calls.append(ToolCall(name=name, arguments=args, raw=body, id=f"call_{len(calls)}"))
        kept.append(reply[last:start])
        last = end
    kept.append(reply[last:])
    content = "\n\n".join(p.strip() for p in kept if p.strip())
    return ParsedReply(content=content, calls=calls, problems=problems)


def assistant_message(parsed: ParsedReply) -> dict:
    """The assistant message to append to the conversation; it carries `tool_calls` when there are any."""
    message = {"role": "assistant", "content": parsed.content}
    if parsed.calls:
        message["tool_calls"] = [c.to_message_call() for c in parsed.calls]
    return message


def tool_message(content: str, name: str | None = None, *, tool_call_id: str | None = None) -> dict:
    """A tool's result as a message. Qwen's template shows only the content; `name` and
    `tool_call_id` (OpenAI's link back to the call) travel along for other consumers."""
    message = {"role": "tool", "content": content if isinstance(content, str) else _dumps(content)}
    if name:
        message["name"] = name
    if tool_call_id:
        message["tool_call_id"] = tool_call_id
    return message


def normalize_tools(tools: object) -> list[dict]:
    """Tools in OpenAI's format from a list (or one) of OpenAI-format or bare function objects."""
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise LabError("The tools must be a JSON list of tools, or one tool object.")
    out, seen = [], set()
    for i, tool in enumerate(tools, start=1):
        if not isinstance(tool, dict):
            raise LabError(f"Tool {i} is not a JSON object.")
        if "function" in tool or "type" in tool:
            if tool.get("type", "function") != "function":
                raise LabError(f"Tool {i} has type '{tool.get('type')}'; only \"function\" tools are supported.")
            fn = tool.get("function")
            if not isinstance(fn, dict):
                raise LabError(f"Tool {i} has no 'function' object.")
        else:
            fn = tool
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise LabError(f"Tool {i} has no 'name'.")
        if not NAME_RE.fullmatch(name):
            raise LabError(f"Tool {i} is named '{name}'; use up to 64 letters, digits, '_', '-' or '.'.")
        if name in seen:
            raise LabError(f"The tool name '{name}' appears twice.")
        seen.add(name)
        if "description" in fn and not isinstance(fn["description"], str):
            raise LabError(f"Tool '{name}' has a 'description' that is not text.")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict) or params.get("type") != "object" \
                or not isinstance(params.get("properties", {}), dict):
            raise LabError(f"Tool '{name}' has 'parameters' that are not a JSON Schema object.")
        required = params.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise LabError(f"Tool '{name}' has a 'required' that is not a list of parameter names.")
        missing = [r for r in required if r not in params.get("properties", {})]
        if missing:
            raise LabError(f"Tool '{name}' requires '{missing[0]}', which is not among its parameters.")
        # Key order is what the template's tojson writes, so every tool reads name, description, parameters.
        head = {"name": name, **({"description": fn["description"]} if "description" in fn else {}),
                "parameters": params}
        out.append({"type": "function", "function": {**head, **{k: v for k, v in fn.items() if k not in head}}})
    return out


def forced_call(tools: list[dict], name: str | None = None) -> dict:
    """A `response_format` that makes the reply a call (OpenAI's tool_choice "required", or a named function):
    decoding is held to one <tool_call> block, {"name": one of these functions (or `name`), "arguments": an
    object valid for that function's parameters}, and then the end of the reply. `tools`: as `normalize_tools`
    gives them. The model layer compiles it into a grammar (lab.models.hf.grammar), as it does a JSON schema."""
    fns = [t["function"] for t in normalize_tools(tools)]
    if name is not None:
        fns = [f for f in fns if f["name"] == name]
        if not fns:
            raise LabError(f"'tool_choice' names the function '{name}', which is not among the tools.")
    if not fns:
        raise LabError("A tool call is required, but no tools were given.")
    return {"type": "tool_call", "named": name is not None,
            "tools": [{"name": f["name"], "parameters": f["parameters"]} for f in fns]}


def load_tools(text: str) -> list[dict]:
    """The page's tools box: JSON holding one tool or a list, each in OpenAI's format or bare
    ({"name", "description", "parameters"}). Empty means no tools."""
    if not text or not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LabError(f"The tools are not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from None
    return normalize_tools(data)


def dump_tools(tools: list[dict]) -> str:
    """Tools as the page's tools box shows them: indented JSON, Chinese left readable."""
    return json.dumps(tools, ensure_ascii=False, indent=2)


def format_call(call: ToolCall) -> str:
    """One call as the page shows it, like Python: get_weather(city="北京", unit="celsius").
    Past 80 characters, one argument per line."""
    args = [f"{k}={_dumps(v)}" for k, v in call.arguments.items()]
    line = f"{call.name}({', '.join(args)})"
    if len(line) <= 80:
        return line
    return f"{call.name}(\n" + "".join(f"    {a},\n" for a in args) + ")"
