"""Tool calling: reading <tool_call> blocks out of literal Qwen-style replies, the tools box and the
example tool sets, and the prompts both chat templates (Qwen2.5's real one and tiny's) render."""

from __future__ import annotations

import json

import pytest

from lab.chat.presets import tool_sets
from lab.chat.tools import (
    ParsedReply,
    ToolCall,
    assistant_message,
    dump_tools,
    format_call,
    load_tools,
    parse_tool_calls,
    tool_message,
)
from lab.errors import LabError
from lab.models import tiny

WEATHER = {"location": "北京", "unit": "celsius"}
CALL_ZH = '{"name": "get_current_weather", "arguments": {"location": "北京", "unit": "celsius"}}'
CALL_DAYS = '{"name": "get_forecast", "arguments": {"location": "Paris", "days": 3}}'


def block(body: str) -> str:
    return f"<tool_call>\n{body}\n</tool_call>"


# --- parsing replies ---------------------------------------------------------------------------

def test_one_call():
    parsed = parse_tool_calls(block(CALL_ZH))
    assert parsed.content == "" and parsed.problems == []
    [call] = parsed.calls
    assert (call.name, call.arguments, call.id) == ("get_current_weather", WEATHER, "call_0")
    assert call.raw == f"\n{CALL_ZH}\n"


def test_two_calls_keep_their_order_and_text_before_them_is_the_content():
    reply = "Let me check both.\n" + block(CALL_DAYS) + "\n" + block(CALL_ZH)
    parsed = parse_tool_calls(reply)
    assert parsed.content == "Let me check both."
    assert [(c.id, c.name) for c in parsed.calls] == [("call_0", "get_forecast"), ("call_1", "get_current_weather")]
    assert parsed.calls[0].arguments == {"location": "Paris", "days": 3}


def test_text_after_the_calls_is_kept_too():
    parsed = parse_tool_calls("Before.\n" + block(CALL_DAYS) + "\nAfter.")
    assert parsed.content == "Before.\n\nAfter." and len(parsed.calls) == 1


def test_chinese_arguments_round_trip_exactly():
    [call] = parse_tool_calls(block(CALL_ZH)).calls
    assert call.arguments["location"] == "北京"
    wire = call.to_openai()
    assert wire == {"id": "call_0", "type": "function",
                    "function": {"name": "get_current_weather", "arguments": '{"location": "北京", "unit": "celsius"}'}}
    assert json.loads(wire["function"]["arguments"]) == WEATHER
    assert call.to_message_call()["function"] == {"name": "get_current_weather", "arguments": WEATHER}


def test_arguments_given_as_a_json_string_are_parsed():
    body = json.dumps({"name": "get_current_weather", "arguments": json.dumps(WEATHER, ensure_ascii=False)},
                      ensure_ascii=False)
    [call] = parse_tool_calls(block(body)).calls
    assert call.arguments == WEATHER


def test_a_call_without_arguments_has_empty_ones():
    [call] = parse_tool_calls(block('{"name": "get_time"}')).calls
    assert call.arguments == {}


@pytest.mark.parametrize("body, fragment", [
    ('{"name": "get_forecast", "arguments": {"location": "Paris" "days": 3}}', "is not valid JSON (Expecting ','"),
    ('{"arguments": {"location": "Paris"}}', 'has no "name"'),
    ('{"name": "get_forecast", "arguments": ["Paris", 3]}', '"arguments" that are not a JSON object'),
    ('{"name": "get_forecast", "arguments": "Paris, 3"}', '"arguments" as a string that is not JSON'),
    ('["get_forecast", {"location": "Paris"}]', "is not a JSON object"),
])
def test_a_malformed_block_stays_as_text_with_one_problem(body, fragment):
    reply = "Checking.\n" + block(CALL_ZH) + "\n" + block(body)
    parsed = parse_tool_calls(reply)
    assert [c.name for c in parsed.calls] == ["get_current_weather"]  # the good one is still a call
    assert parsed.content == "Checking.\n\n" + block(body)
    [problem] = parsed.problems
    assert problem.startswith("Tool call 2 ") and fragment in problem and problem.endswith("; shown as text.")


def test_bad_json_names_the_position():
    [problem] = parse_tool_calls(block('{"name": "f", "arguments": {"a": 1 "b": 2}}')).problems
    assert problem == "Tool call 1 is not valid JSON (Expecting ',' delimiter at char 35); shown as text."


def test_a_reply_cut_off_inside_a_call_keeps_the_fragment_as_text():
    reply = "Sure.\n" + block(CALL_DAYS) + '\n<tool_call>\n{"name": "get_current_weather", "argum'
    parsed = parse_tool_calls(reply)
    assert [c.name for c in parsed.calls] == ["get_forecast"]
    assert parsed.content == 'Sure.\n\n<tool_call>\n{"name": "get_current_weather", "argum'
    [problem] = parsed.problems
    assert problem.startswith("Tool call 2 is cut off before its </tool_call>")


def test_an_unclosed_block_before_another_does_not_swallow_it():
    reply = '<tool_call>\n{"name": "get_forecast"\n' + block(CALL_ZH)
    parsed = parse_tool_calls(reply)
    assert [(c.id, c.name) for c in parsed.calls] == [("call_0", "get_current_weather")]
    assert parsed.content == '<tool_call>\n{"name": "get_forecast"'
    assert parsed.problems == ["Tool call 1 has no </tool_call> before the next <tool_call>; shown as text."]


def test_an_unknown_function_is_still_a_call_but_is_flagged():
    tools = load_tools('[{"name": "get_current_weather"}, {"name": "get_forecast"}]')
    parsed = parse_tool_calls(block('{"name": "book_hotel", "arguments": {}}') + block(CALL_ZH), tools)
    assert [c.name for c in parsed.calls] == ["book_hotel", "get_current_weather"]
    assert parsed.problems == [
        "Tool call 1 calls unknown function 'book_hotel'; the tools are get_current_weather, get_forecast."]
    assert parse_tool_calls(block(CALL_ZH), []).problems == [
        "Tool call 1 calls unknown function 'get_current_weather'; no tools were offered."]


def test_a_reply_without_calls_is_just_content():
    assert parse_tool_calls("  北京今天晴。\n") == ParsedReply(content="北京今天晴。", calls=[], problems=[])


def test_messages_for_the_next_turn():
    parsed = parse_tool_calls("Checking.\n" + block(CALL_ZH))
    assert assistant_message(parsed) == {
        "role": "assistant", "content": "Checking.",
        "tool_calls": [{"id": "call_0", "type": "function",
                        "function": {"name": "get_current_weather", "arguments": WEATHER}}]}
    assert assistant_message(parse_tool_calls("Hi.")) == {"role": "assistant", "content": "Hi."}
    assert tool_message("25°C") == {"role": "tool", "content": "25°C"}
    assert tool_message("25°C", "get_current_weather", tool_call_id="call_0") == {
        "role": "tool", "content": "25°C", "name": "get_current_weather", "tool_call_id": "call_0"}


def test_format_call_reads_like_python_and_wraps_long_calls():
    call = ToolCall(name="get_weather", arguments={"city": "北京", "unit": "celsius"}, raw="", id="call_0")
    assert format_call(call) == 'get_weather(city="北京", unit="celsius")'
    assert format_call(ToolCall("get_time", {}, "", "call_0")) == "get_time()"
    long = ToolCall("search_flights", {"from_city": "上海", "to_city": "成都", "date": "2025-05-01",
                                       "notes": "window seat, vegetarian meal"}, "", "call_0")
    assert format_call(long) == ('search_flights(\n    from_city="上海",\n    to_city="成都",\n'
                                 '    date="2025-05-01",\n    notes="window seat, vegetarian meal",\n)')


# --- the tools box and the example sets --------------------------------------------------------

PARAMS = {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}
BARE = {"name": "get_current_weather", "description": "Weather now.", "parameters": PARAMS}
OPENAI = {"type": "function", "function": BARE}


def test_both_tool_formats_normalize_to_openais():
    assert load_tools(json.dumps(BARE)) == load_tools(json.dumps([OPENAI])) == [OPENAI]
    assert load_tools(json.dumps([{"function": BARE}])) == [OPENAI]
    assert load_tools("  \n") == [] and load_tools("") == []
    # no parameters: an empty schema object, so every tool the template lists has the same keys
    assert load_tools('{"name": "get_time"}') == [
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]


@pytest.mark.parametrize("text, message", [
    ('[{"name": "a",\n  "parameters": {"type": "object"},\n    "description" "x"}]',
     "The tools are not valid JSON (line 3, column 19: Expecting ':' delimiter)."),
    ('"get_weather"', "The tools must be a JSON list of tools, or one tool object."),
    ('[{"name": "a"}, "b"]', "Tool 2 is not a JSON object."),
    ('[{"name": "a"}, {"description": "x"}]', "Tool 2 has no 'name'."),
    ('[{"type": "function", "function": {"description": "x"}}]', "Tool 1 has no 'name'."),
    ('[{"type": "function"}]', "Tool 1 has no 'function' object."),
    ('[{"type": "retrieval", "function": {"name": "a"}}]',
     "Tool 1 has type 'retrieval'; only \"function\" tools are supported."),
    ('[{"name": "get weather"}]', "Tool 1 is named 'get weather'; use up to 64 letters, digits, '_', '-' or '.'."),
    ('[{"name": "a"}, {"name": "a"}]', "The tool name 'a' appears twice."),
    ('[{"name": "x", "description": 3}]', "Tool 'x' has a 'description' that is not text."),
    ('[{"name": "x", "parameters": {"location": "string"}}]',
     "Tool 'x' has 'parameters' that are not a JSON Schema object."),
    ('[{"name": "x", "parameters": ["location"]}]', "Tool 'x' has 'parameters' that are not a JSON Schema object."),
    ('[{"name": "x", "parameters": {"type": "object", "properties": {}, "required": ["city"]}}]',
     "Tool 'x' requires 'city', which is not among its parameters."),
])
def test_bad_tools_are_one_sentence(text, message):
    with pytest.raises(LabError) as e:
        load_tools(text)
    assert str(e.value) == message


def test_every_example_set_loads_and_passes_the_tools_box():
    sets = tool_sets()
    assert {"Weather", "Calculator", "出行助手"} <= set(sets)
    for name, tools in sets.items():
        assert tools and load_tools(dump_tools(tools)) == tools, name
    names = {s: [t["function"]["name"] for t in tools] for s, tools in sets.items()}
    assert names["Weather"] == ["get_current_weather", "get_forecast"]
    assert names["Calculator"] == ["calculate"]
    assert {"search_flights", "book_hotel"} <= set(names["出行助手"])
    assert "北京" not in dump_tools(sets["出行助手"]) and "出发城市" in dump_tools(sets["出行助手"])  # not \u-escaped


@pytest.mark.parametrize("content, fragment", [
    ("tool_sets: [", "is not valid YAML"),
    ("tool_sets: []", "has no list under 'tool_sets'"),
    ("tool_sets: [{name: a}]", "needs a 'name' and a list of 'tools'"),
    ("tool_sets: [{name: a, tools: []}, {name: a, tools: []}]", "appears twice"),
    ("tool_sets: [{name: Broken, tools: [{description: x}]}]", "Tool set 'Broken' in"),
])
def test_broken_tool_set_files_are_named_in_one_sentence(tmp_path, monkeypatch, content, fragment):
    (tmp_path / "tools.yaml").write_text(content)
    monkeypatch.setenv("LAB_PROMPTS_DIR", str(tmp_path))
    with pytest.raises(LabError) as e:
        tool_sets()
    assert fragment in str(e.value) and str(tmp_path) in str(e.value) and "\n" not in str(e.value)


# --- the chat templates: Qwen2.5's real one and tiny's own --------------------------------------

CALL_FORMAT = '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'


@pytest.fixture(scope="module")
def built_tokenizer():
    return tiny.build_tokenizer()  # the project's own tokenizer, as tiny-random has it without LAB_DATA_DIR


@pytest.fixture(params=["qwen2.5", "tiny"])
def tok(request):
    return request.getfixturevalue("qwen_tokenizer" if request.param == "qwen2.5" else "built_tokenizer")


def render(tok, messages, tools=None):
    return tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)


def test_the_prompt_lists_the_tools_and_asks_for_the_call_format(tok):
    tools = tool_sets()["出行助手"] + tool_sets()["Weather"]
    messages = [{"role": "system", "content": "你是出行助手。"}, {"role": "user", "content": "订酒店"}]
    prompt = render(tok, messages, tools)
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    assert prompt.startswith("<|im_start|>system\n你是出行助手。")
    assert f"<tools>\n{listed}\n</tools>" in prompt
    assert "查询两个城市之间某一天的航班" in prompt and '"name": "book_hotel"' in prompt
    assert CALL_FORMAT in prompt
    assert prompt.count("<|im_start|>system") == 1  # the system prompt is not repeated as its own turn
    assert prompt.endswith("<|im_start|>user\n订酒店<|im_end|>\n<|im_start|>assistant\n")


def test_without_a_system_prompt_the_tools_turn_uses_the_default(tok):
    prompt = render(tok, [{"role": "user", "content": "hi"}], tool_sets()["Calculator"])
    assert prompt.startswith("<|im_start|>system\nYou are ") and "<tools>\n" in prompt and CALL_FORMAT in prompt


def test_a_call_and_its_results_render_back_into_the_next_prompt(tok):
    tools = tool_sets()["Weather"]
    reply = "我来查一下。\n" + block(CALL_ZH) + "\n" + block(CALL_DAYS)
    messages = [{"role": "user", "content": "北京和巴黎的天气？"},
                assistant_message(parse_tool_calls(reply, tools)),
                tool_message('{"temperature": 25, "unit": "celsius"}', "get_current_weather"),
                tool_message("晴，晴，多云", "get_forecast")]
    prompt = render(tok, messages, tools)
    # the model's own reply comes back byte for byte: same name, same arguments, Chinese unescaped
    assert "<|im_start|>assistant\n" + reply + "<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>user\n<tool_response>\n{\"temperature\": 25, \"unit\": \"celsius\"}\n"
                           "</tool_response>\n<tool_response>\n晴，晴，多云\n</tool_response><|im_end|>\n"
                           "<|im_start|>assistant\n")


def test_a_call_without_text_renders_only_the_block(tok):
    messages = [{"role": "user", "content": "Paris?"}, assistant_message(parse_tool_calls(block(CALL_DAYS))),
                tool_message("sunny")]
    prompt = render(tok, messages, tool_sets()["Weather"])
    expected = "<|im_start|>assistant\n" + block(CALL_DAYS) + "<|im_end|>\n<|im_start|>user\n<tool_response>\nsunny\n"
    assert expected in prompt


def test_tiny_renders_openai_wire_calls_like_parsed_ones(built_tokenizer):
    call = parse_tool_calls(block(CALL_ZH)).calls[0]
    as_dict = {"role": "assistant", "content": "", "tool_calls": [call.to_message_call()]}
    as_wire = {"role": "assistant", "content": None, "tool_calls": [call.to_openai()]}
    user = {"role": "user", "content": "北京?"}
    assert render(built_tokenizer, [user, as_wire]) == render(built_tokenizer, [user, as_dict])


def test_tiny_plain_chats_are_still_plain_chatml(built_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello 你好"}, {"role": "user", "content": "a\n\nb"}]
    assert render(built_tokenizer, messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nHello 你好<|im_end|>\n<|im_start|>user\na\n\nb<|im_end|>\n<|im_start|>assistant\n")
    assert built_tokenizer.apply_chat_template(messages[1:3], tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nHello 你好<|im_end|>\n")
    assert render(built_tokenizer, messages, tools=[]) == render(built_tokenizer, messages)  # empty tools box


def test_the_cached_tiny_checkpoint_keeps_the_tool_template(monkeypatch, tmp_path):
    from transformers import AutoTokenizer

    monkeypatch.delenv("LAB_DATA_DIR", raising=False)
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    tok = AutoTokenizer.from_pretrained(tiny.ensure_tiny_checkpoint())
    assert CALL_FORMAT in render(tok, [{"role": "user", "content": "hi"}], tool_sets()["Calculator"])
