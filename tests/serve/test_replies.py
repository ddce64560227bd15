"""`lab.serve.replies`: a reply's <tool_call> blocks as OpenAI's `tool_calls`, whole and streamed."""

from __future__ import annotations

from lab.serve.replies import ToolCallStream, chat_message
from tests.conftest import WEATHER


def test_tool_call_blocks_become_openai_tool_calls():
    reply = ('Let me check.\n<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "北京"}}\n'
             '</tool_call>')
    message, called = chat_message(reply, [WEATHER])
    assert called and message["content"] == "Let me check."
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_current_weather", "arguments": '{"location": "北京"}'}
    # Streamed: the text before the block goes out as it comes, the block never does.
    stream = ToolCallStream([WEATHER])
    sent = "".join(stream.feed(reply[i:i + 3]) for i in range(0, len(reply), 3))
    assert sent == "Let me check.\n" and stream.finish() == "" and stream.calls[0].arguments == {"location": "北京"}
    stream = ToolCallStream([WEATHER])  # a '<' that opens no block is held back only until it is clear
    assert stream.feed("a <tool") == "a " and stream.feed("s> b") == "<tools> b" and stream.finish() == ""


def test_without_tools_the_text_is_the_reply():
    assert chat_message("<tool_call>x</tool_call>", None) == (
        {"role": "assistant", "content": "<tool_call>x</tool_call>"}, False)
    stream = ToolCallStream(None)
    assert stream.feed("a <tool") == "a <tool" and stream.finish() == ""
