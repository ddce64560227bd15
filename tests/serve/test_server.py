"""`python -m lab.serve` in a subprocess, called with the official OpenAI Python SDK as any client would (and
with httpx for what the SDK cannot send), and `python app.py --api` serving the same /v1 routes beside the page."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from lab.interface import SamplingParams
from tests.conftest import WEATHER, serving

pytestmark = pytest.mark.slow  # a server in a subprocess; tests/serve/test_requests.py covers the rules fast

KEY = "sk-lab-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


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


@pytest.mark.slow
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


def _error(excinfo) -> dict:
    return excinfo.value.body if "message" in (excinfo.value.body or {}) else excinfo.value.body["error"]


def test_errors_have_openais_shape_and_status(client, server):
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).models.list()
    assert e.value.status_code == 401 and "API key" in _error(e)["message"]
    assert httpx.get(server + "/v1/models").status_code == 401  # no key at all
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-random", messages=HELLO, n=17)
    assert e.value.status_code == 400 and _error(e)["message"] == "'n' must be between 1 and 16, got 17."
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
    assert "'logprobs' must be a whole number between 0 and 20" in _error(e)["message"]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert _error(e)["code"] == "model_not_found"
    r = httpx.post(server + "/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "The request body is not valid JSON."


def test_unknown_routes_and_methods_have_openais_shape(server):
    r = httpx.get(server + "/v1/engines", headers=AUTH)
    assert r.status_code == 404 and set(r.json()) == {"error"}
    error = r.json()["error"]
    assert error["message"].startswith("There is no route /v1/engines here; this server has /v1/chat/completions")
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, None)
    r = httpx.get(server + "/v1/chat/completions", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["message"] == "/v1/chat/completions does not take GET; use POST."
    r = httpx.post(server + "/v1/models", headers=AUTH, json={})
    assert r.status_code == 405 and r.json()["error"]["message"] == "/v1/models does not take POST; use GET."


def test_bodies_that_are_not_json_objects_are_refused(server):
    def post(content: bytes, **headers):
        r = httpx.post(server + "/v1/chat/completions", content=content, headers={**AUTH, **headers})
        assert r.status_code == 400 and r.json()["error"]["param"] is None
        return r.json()["error"]["message"]

    as_json = {"Content-Type": "application/json"}
    for body in (b"[1, 2]", b'"Hi"', b"null", b"3"):
        assert post(body, **as_json) == "The request body must be a JSON object."
    assert post(b"", **as_json) == post(b'{"messages": ', **as_json) == "The request body is not valid JSON."
    assert post(b'{"messages": []}', **{"Content-Type": "text/plain"}) == \
        "The request body was not sent as JSON; send it with 'Content-Type: application/json'."
    # Without the key, a body that is not JSON is still a 401 (FastAPI reads the body before checking the key).
    assert httpx.post(server + "/v1/completions", content=b"{not json").status_code == 401


def test_invalid_fields_name_their_param(server):
    r = httpx.post(server + "/v1/chat/completions", headers=AUTH, json={"messages": HELLO, "temperature": -1})
    assert r.status_code == 400 and r.json()["error"] == {
        "message": "'temperature' must be 0 or a number between 0.01 and 2, got -1.", "type": "invalid_request_error",
        "param": "temperature", "code": None}
    r = httpx.post(server + "/v1/completions", headers=AUTH, json={"prompt": [1, "two"], "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(server + "/tokenize", headers=AUTH, json={"prompt": 3})
    assert r.status_code == 400 and r.json()["error"]["message"] == \
        "Send 'prompt' (a string) or 'messages' to count tokens."


def test_tokenize_counts_prompts_and_messages(server, tiny):
    r = httpx.post(server + "/tokenize", headers=AUTH, json={"prompt": "Say hello. 你好"}).json()
    assert r["count"] == tiny.count_tokens("Say hello. 你好") == len(r["tokens"]) and r["max_model_len"] == 4096
    r = httpx.post(server + "/tokenize", headers=AUTH, json={"messages": HELLO}).json()
    assert r["count"] == tiny.count_chat_tokens(HELLO)


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
    # The same without streaming: the client gives up waiting for the whole reply.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server + "/v1/chat/completions", json={**body, "stream": False}, timeout=1, headers=AUTH)
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


@pytest.mark.slow
def test_app_auth_guards_v1_beside_the_page():
    """`app.py --auth alice:s3cret --api` without --api-key: /v1 takes the same login as HTTP Basic, nothing else."""
    import base64

    from gradio_client import Client

    login = ("alice", "s3cret")
    basic = {"Authorization": "Basic " + base64.b64encode(b"alice:s3cret").decode()}
    with serving(["app.py", "--model", "tiny-random", "--api", "--auth", ":".join(login)], "app-auth-server.log",
                 ready_path="/health") as url:
        for r in (httpx.get(url + "/v1/models"), httpx.get(url + "/v1/models", auth=("alice", "wrong")),
                  httpx.post(url + "/v1/chat/completions", json={"messages": HELLO}),
                  httpx.post(url + "/tokenize", json={"prompt": "x"}),
                  httpx.get(url + "/v1/models", headers={"Authorization": "Bearer s3cret"})):
            assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
            assert r.headers["www-authenticate"].startswith("Basic")
        with pytest.raises(openai.AuthenticationError):  # an SDK client with a made-up key
            openai.OpenAI(base_url=url + "/v1", api_key="anything", max_retries=0).models.list()
        # The SDK with the login as its Authorization header (it replaces the Bearer one), and curl -u alike.
        api = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, default_headers=basic)
        reply = api.chat.completions.create(model="tiny-random", messages=HELLO, max_tokens=4, temperature=0)
        assert reply.choices[0].message.role == "assistant"
        assert httpx.get(url + "/v1/models", auth=login).json()["data"][0]["id"] == "tiny-random"
        r = httpx.get(url + "/v1/engines", auth=login)
        assert r.status_code == 404 and r.json()["error"]["message"].startswith("There is no route /v1/engines")
        # The page wants the same login.
        with pytest.raises(Exception):
            Client(url + "/", verbose=False)
        page = Client(url + "/", auth=login, verbose=False)
        assert page.predict(api_name="/model_info")["name"] == "tiny-random"
