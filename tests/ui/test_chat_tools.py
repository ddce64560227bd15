"""JSON mode and tool calls in the Chat tab's logic, on literal replies (no model needed)."""

import json

import pytest

from lab.chat.conversation import Conversation, parse_history, with_system
from lab.chat.presets import tool_sets
from lab.chat.tools import dump_tools, tool_message
from lab.errors import LabError
from lab.ui.chat_tools import ReplyShape, display, panels

WEATHER = dump_tools(tool_sets()["Weather"])
TWO_CALLS = ('我来查一下。\n'
             '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "北京"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_forecast", "arguments": {"location": "上海", "days": 3}}\n</tool_call>')


def test_settings_from_the_form():
    assert ReplyShape.from_ui(False, "", "") == ReplyShape(None, [])
    assert ReplyShape.from_ui(True, "", "").response_format == {"type": "json_object"}
    assert [t["function"]["name"] for t in ReplyShape.from_ui(False, "", WEATHER).tools] == [
        "get_current_weather", "get_forecast"]
    with pytest.raises(LabError, match="cannot call tools while it is on"):
        ReplyShape.from_ui(True, "", WEATHER)
    with pytest.raises(LabError, match="JSON Schema is not valid JSON"):
        ReplyShape.from_ui(True, "{", "")


def test_a_reply_with_two_calls_becomes_a_message_with_tool_calls():
    s = ReplyShape.from_ui(False, "", WEATHER)
    message, extra = s.finish(TWO_CALLS)
    assert message["content"] == "我来查一下。"
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_current_weather", "get_forecast"]
    assert message["tool_calls"][0]["function"]["arguments"] == {"location": "北京"}
    assert extra["raw"] == TWO_CALLS and "tool_problems" not in extra


def test_a_malformed_call_stays_text_with_a_note():
    s = ReplyShape.from_ui(False, "", WEATHER)
    message, extra = s.finish('<tool_call>\n{"name": "get_forecast", "arguments": {"days": 3\n</tool_call>')
    assert message is None and len(extra["tool_problems"]) == 1 and "not valid JSON" in extra["tool_problems"][0]


def test_json_mode_check_goes_with_the_reply():
    s = ReplyShape.from_ui(True, json.dumps({"type": "object", "required": ["a"]}), "")
    _, extra = s.finish('{"b": 1}')
    assert extra["json"]["parses"] and extra["json"]["valid"] is False and "required" in extra["json"]["summary"]


def conversation_with_calls() -> Conversation:
    from lab.interface import ReplyStats, SamplingParams

    conv = Conversation([{"role": "user", "content": "北京和上海天气如何？"}])
    message, extra = ReplyShape.from_ui(False, "", WEATHER).finish(TWO_CALLS)
    stats = ReplyStats(10, 20, 0.1, 50.0, 0.5, "stop", seed=1)
    conv.add_reply(TWO_CALLS, stats, SamplingParams(), 0, message=message, **extra)
    return conv


def test_calls_wait_for_their_results_in_order():
    conv = conversation_with_calls()
    assert [c["function"]["name"] for c in conv.pending_calls()] == ["get_current_weather", "get_forecast"]
    conv.messages.append(tool_message('{"temperature": 21}', "get_current_weather"))
    assert [c["function"]["name"] for c in conv.pending_calls()] == ["get_forecast"]
    assert conv.last_user_index(or_tool=True) == 2 and conv.last_user_index() == 0
    conv.messages.append(tool_message('{"days": []}', "get_forecast"))
    assert conv.pending_calls() == []


def test_the_page_shows_calls_as_calls_and_results_as_notes():
    conv = conversation_with_calls()
    conv.messages.append(tool_message('{"temperature": 21}', "get_current_weather"))
    shown = display(conv.messages)
    assert len(shown) == len(conv.messages)  # one chat bubble per message: edits index the conversation
    assert 'get_current_weather(location="北京")' in shown[1]["content"]["text"]
    assert 'get_forecast(location="上海", days=3)' in shown[1]["content"]["text"]
    assert "<tool_call>" not in shown[1]["content"]["text"]
    assert shown[2]["role"] == "assistant" and shown[2]["metadata"]["title"] == "📎 Result of get_current_weather"
    *_, tool_group, calls_md = panels(conv)
    assert "The model called 2 tools" in calls_md and "Enter the result of `get_forecast`" in calls_md
    assert "✓ `get_current_weather`" in calls_md and "⏳ `get_forecast`" in calls_md


def test_tool_calls_survive_the_trip_to_the_template_and_back_from_programs():
    conv = conversation_with_calls()
    sent = with_system("sys", conv.messages)
    assert sent[2]["tool_calls"] == conv.messages[1]["tool_calls"]
    # A program sends OpenAI's shape: null content, arguments as a JSON string.
    _, history = parse_history([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_0", "type": "function",
             "function": {"name": "get_forecast", "arguments": '{"location": "上海", "days": 2}'}}]},
        {"role": "tool", "content": "晴"},
    ])
    assert history[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_forecast", "arguments": {"location": "上海", "days": 2}}}]}
    with pytest.raises(LabError, match="tool call without a name"):
        parse_history([{"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": "{}"}}]}])
