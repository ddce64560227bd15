"""The running app (python app.py --model tiny-random) called from a program with gradio_client."""

from __future__ import annotations

import json

import pytest
from gradio_client import Client

from lab.chat.presets import system_presets
from lab.interface import SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def test_chat_endpoint_returns_the_models_reply(client, tiny):
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! 你好"}]
    got = client.predict(message="Tell me more", history=history, system_prompt="Be brief.", temperature=0.9,
                         max_new_tokens=24, seed=11, api_name="/chat")
    assert isinstance(got, str) and got
    # The same messages and seed through the model layer in this process give the same reply.
    messages = [{"role": "system", "content": "Be brief."}, *history, {"role": "user", "content": "Tell me more"}]
    params = SamplingParams(temperature=0.9, max_new_tokens=24, seed=11)
    assert got == "".join(c.text for c in tiny.stream_chat(messages, params))


def test_chat_endpoint_defaults_and_reproducibility(client):
    a = client.predict(message="你好", seed=5, max_new_tokens=16, api_name="/chat")
    b = client.predict(message="你好", seed=5, max_new_tokens=16, api_name="/chat")
    assert a == b


def test_chat_endpoint_streams(client):
    job = client.submit(message="stream please", seed=3, max_new_tokens=64, api_name="/chat")
    final = job.result()
    partials = job.outputs()
    assert partials[-1] == final and all(final.startswith(p) for p in partials)


def test_bad_input_is_one_sentence_and_the_app_keeps_serving(client):
    with pytest.raises(Exception, match="The message is empty"):
        client.predict(message="  ", api_name="/chat")
    with pytest.raises(Exception, match="Message 1 of the history needs a role"):
        client.predict(message="hi", history=[{"role": "robot", "content": "x"}], api_name="/chat")
    with pytest.raises(Exception, match="exceeds the model's context of 4,096 tokens"):
        client.predict(message="word " * 5000, max_new_tokens=16, api_name="/chat")
    assert client.predict(message="still there?", max_new_tokens=4, seed=1, api_name="/chat")


def test_session_actions_send_regenerate_undo_export_clear(app_url):
    c = Client(app_url, verbose=False)
    system = system_presets()["Qwen default"]
    shown, box, stats, _table = c.predict("What is 2+2?", system, 0.7, 0.8, 20, 1.05, 32, 1, api_name="/send")
    assert [m["role"] for m in shown] == ["user", "assistant"]
    assert box != "What is 2+2?"  # the box was emptied when the message went out (and is not touched after)
    assert "completion" in stats and "seed 1" in stats
    shown2, *_ = c.predict(system, 0.7, 0.8, 20, 1.05, 32, 2, api_name="/regenerate")
    assert len(shown2) == 2 and "seed" in _[1]
    path = c.predict(system, 0.7, 0.8, 20, 1.05, 32, 2, api_name="/export")
    record = json.loads(open(path, encoding="utf-8").read())
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert record["messages"][2]["stats"]["seed"] == 2 and record["model"]["name"] == "tiny-random"
    shown3, box3, *_ = c.predict(api_name="/undo")
    assert shown3 == [] and box3 == "What is 2+2?"
    shown4, *_ = c.predict(api_name="/clear")
    assert shown4 == []


def test_long_conversations_drop_the_oldest_turns_and_say_so(app_url, tiny):
    c = Client(app_url, verbose=False)
    words = 2000 * 2000 // tiny.count_tokens("word " * 2000)  # about 2,000 tokens a message, either tokenizer
    for n in range(3):  # tiny-random's context is 4,096: a turn plus 256 new tokens fits, two turns do not
        shown, _box, stats, _table = c.predict(f"turn {n}: " + "word " * words, "Be brief.", 0.7, 0.8, 20, 1.05,
                                               256, 1, api_name="/send")
    assert len(shown) == 6  # the page keeps every message; only what the model sees is trimmed
    assert "2 oldest turns dropped to fit the context" in stats


def test_model_info(client):
    info = client.predict(api_name="/model_info")
    assert info["name"] == "tiny-random" and info["quant"] == "fp32" and info["context_length"] == 4096


def test_chat_structured_returns_a_parsed_object_that_meets_the_schema(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
              "required": ["city", "days"]}
    got = client.predict(message="JSON please", json_schema=json.dumps(schema), seed=4, max_new_tokens=96,
                         api_name="/chat_structured")
    assert got["json"]["parses"] and got["json"]["valid"], got
    assert json.loads(got["text"]) == got["json"]["parsed"] and set(got["json"]["parsed"]) == {"city", "days"}
    assert got["stats"]["constraint_s"] is not None and got["tool_calls"] == []


def test_chat_structured_takes_tools_and_a_tool_history(client):
    tools = json.dumps([{"name": "get_time", "description": "The time now", "parameters": {"type": "object"}}])
    history = [{"role": "user", "content": "What time is it?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_0", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
               {"role": "tool", "content": "12:00"}]
    got = client.predict(message="And in an hour?", history=history, tools=tools, seed=1, max_new_tokens=8,
                         api_name="/chat_structured")
    assert got["json"] is None and isinstance(got["tool_calls"], list) and got["stats"]["completion_tokens"] <= 8


def test_bad_json_settings_are_one_sentence(client):
    with pytest.raises(Exception, match="JSON Schema is invalid at type"):
        client.predict(message="x", json_schema='{"type": "objekt"}', api_name="/chat_structured")
    with pytest.raises(Exception, match="cannot call tools while it is on"):
        client.predict(message="x", json_mode=True, tools='[{"name": "f"}]', api_name="/chat")
