"""`python -m lab.serve` called with the official OpenAI Python SDK, as any client would, and
`python app.py --api` serving the same /v1 routes beside the page."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from lab.interface import SamplingParams
from lab.serve.replies import ToolCallStream, chat_message
from lab.serve.requests import parse_chat
from tests.conftest import WEATHER, serving

KEY = "sk-lab-test"


@pytest.fixture(scope="module")
def server():
    with serving(["-m", "lab.serve", "--model", "tiny-random", "--api-key", KEY], "serve-server.log") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)


HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello. 你好"}]


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny-random"]
    assert models[0].model_extra["max_model_len"] == 4096


def test_chat_matches_the_model_layer(client, tiny):
    reply = client.chat.completions.create(model="tiny-random", messages=HELLO, max_tokens=12, temperature=0)
    local = "".join(c.text for c in tiny.stream_chat(HELLO, SamplingParams(temperature=0, max_new_tokens=12)))
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == local
    assert choice.finish_reason in ("length", "stop")
    assert reply.usage.prompt_tokens == tiny.count_chat_tokens(HELLO)
    assert reply.usage.completion_tokens <= 12 and reply.usage.total_tokens == reply.usage.prompt_tokens + \
        reply.usage.completion_tokens
    # Same seed, same sampled reply; the model's name is matched in any case.
    a, b = (client.chat.completions.create(model="TINY-random", messages=HELLO, max_tokens=8, seed=7)
            for _ in range(2))
    assert a.choices[0].message.content == b.choices[0].message.content


def test_streaming_chat_sends_deltas_a_finish_reason_and_usage(client):
    whole = client.chat.completions.create(model="tiny-random", messages=HELLO, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny-random", messages=HELLO, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_with_logprobs_and_echo(client, tiny):
    import torch

    prompt = "The capital of France is"
    out = client.completions.create(model="tiny-random", prompt=prompt, max_tokens=3, temperature=0, logprobs=3,
                                    echo=True, extra_body={"repetition_penalty": 1.0})
    choice = out.choices[0]
    lp = choice.logprobs
    n_prompt = tiny.count_tokens(prompt)
    assert choice.text.startswith(prompt) and len(lp.tokens) == n_prompt + 3 == out.usage.total_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[n_prompt] == len(prompt)
    # The prompt's log-probabilities are a forward pass's log-softmax.
    ids = tiny.encode(prompt)
    with torch.inference_mode():
        ref = torch.log_softmax(tiny.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    for i in range(1, n_prompt):
        assert abs(lp.token_logprobs[i] - ref[i - 1, ids[i]].item()) < 1e-4
    for i in range(n_prompt, n_prompt + 3):  # greedy, no penalty: each new token is its distribution's top
        assert len(lp.top_logprobs[i]) <= 4 and abs(lp.token_logprobs[i] - max(lp.top_logprobs[i].values())) < 1e-5
    # A list of prompts, without echo: the text is only what was generated.
    two = client.completions.create(model="tiny-random", prompt=["Hello", "1, 2, 3,"], max_tokens=4, temperature=0)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[1].text == tiny.generate(["1, 2, 3,"], SamplingParams(temperature=0, max_new_tokens=4))[0].text


def test_json_schema_response_format_returns_valid_json(client):
    from jsonschema import validate

    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
              "required": ["city", "days"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model="tiny-random", messages=[{"role": "user", "content": "Plan a trip, as JSON."}], max_tokens=64, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "trip", "schema": schema}})
    validate(json.loads(reply.choices[0].message.content), schema)
    reply = client.chat.completions.create(model="tiny-random", messages=HELLO, max_tokens=32, seed=3,
                                           response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_tools_reach_the_template_and_tool_messages_are_accepted(client):
    ask = [{"role": "user", "content": "北京天气如何？"}]
    plain = client.chat.completions.create(model="tiny-random", messages=ask, max_tokens=1, temperature=0)
    with_tools = client.chat.completions.create(model="tiny-random", messages=ask, max_tokens=1, temperature=0,
                                                tools=[WEATHER])
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 30  # the template lists the tool
    history = ask + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_current_weather", "arguments": "{\"location\": \"北京\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 25}"}]
    reply = client.chat.completions.create(model="tiny-random", messages=history, max_tokens=4, tools=[WEATHER])
    assert reply.choices[0].finish_reason in ("length", "stop", "tool_calls")


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
    assert parse_chat({"messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": "y"}]}
                      ).messages[0] == {"role": "system", "content": "x"}


def _error(excinfo) -> dict:
    return excinfo.value.body if "message" in (excinfo.value.body or {}) else excinfo.value.body["error"]


def test_errors_have_openais_shape_and_status(client, server):
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).models.list()
    assert e.value.status_code == 401 and "API key" in _error(e)["message"]
    assert httpx.get(server + "/v1/models").status_code == 401  # no key at all
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-random", messages=HELLO, n=2)
    assert e.value.status_code == 400 and _error(e)["message"].startswith("'n' must be 1")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "word " * 5000}],
                                       max_tokens=16)
    assert "exceeds tiny-random's context of 4,096 tokens" in _error(e)["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-random", messages=HELLO, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": "city"}}})
    assert "JSON Schema is invalid" in _error(e)["message"] and _error(e)["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-random", prompt="x", logprobs=21)
    assert "'logprobs' must be between 0 and 20" in _error(e)["message"]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert _error(e)["code"] == "model_not_found"
    r = httpx.post(server + "/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "The request body is not valid JSON."


def test_a_client_that_disconnects_stops_its_generation(client, server):
    body = {"model": "tiny-random", "messages": HELLO, "max_tokens": 4000, "stream": True, "seed": 1,
            "extra": "ignored"}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any('"content"' in line for line in got)
    # 4,000 tokens would hold the model for a minute or more; the next request gets it at once.
    t = time.monotonic()
    client.chat.completions.create(model="tiny-random", messages=HELLO, max_tokens=2)
    assert time.monotonic() - t < 20


@pytest.mark.slow
def test_app_api_serves_v1_beside_the_page():
    from gradio_client import Client

    with serving(["app.py", "--model", "tiny-random", "--api", "--api-key", KEY], "app-api-server.log",
                 ready_path="/") as url:
        assert httpx.get(url + "/v1/models").status_code == 401
        api = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in api.models.list().data] == ["tiny-random"]
        reply = api.chat.completions.create(model="tiny-random", messages=HELLO, max_tokens=6, temperature=0)
        page = Client(url + "/", verbose=False)
        assert page.predict(message="Say hello. 你好", system_prompt="Be brief.", temperature=0, max_new_tokens=6,
                            api_name="/chat") == reply.choices[0].message.content
