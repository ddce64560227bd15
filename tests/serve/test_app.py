"""`lab.serve`'s app in this process, over tiny-random: every error status in OpenAI's shape with one sentence,
hostile bodies refused as 400s, a client that goes away cancelling its generation, the page's login guarding /v1,
and a failed model swap reaching the API caller as an error. One adversarial property per test."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from lab.models.manager import LoadRequest, ModelManager
from lab.serve.app import MAX_BODY_BYTES, build_api
from tests.conftest import free_port

HI = [{"role": "user", "content": "Hi"}]
LONG = 3000  # new tokens: a minute or more of decoding on a CPU, were it not cancelled


class Spy:
    """The tiny model, recording each reply's cancel event, chunks after that event was set, and how it ended."""

    def __init__(self, model) -> None:
        self.model, self.replies = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def stream_chat(self, messages, params, cancel=None, tools=None):
        reply = {"cancel": cancel, "after_cancel": 0, "finish": None, "tokens": None}
        self.replies.append(reply)
        for chunk in self.model.stream_chat(messages, params, cancel, tools=tools):
            reply["after_cancel"] += cancel.is_set()
            if chunk.stats:
                reply["finish"], reply["tokens"] = chunk.stats.finish_reason, chunk.stats.completion_tokens
            yield chunk

    def stream_many(self, prompts, params, cancel=None):  # a completion's rows, lab.serve.rows
        reply = {"cancel": cancel, "after_cancel": 0, "finish": None, "tokens": None}
        self.replies.append(reply)
        for row, chunk in self.model.stream_many(prompts, params, cancel):
            reply["after_cancel"] += cancel.is_set()
            if chunk.stats and row == 0:
                reply["finish"], reply["tokens"] = chunk.stats.finish_reason, chunk.stats.completion_tokens
            yield row, chunk

    def generate(self, prompts, params, cancel=None, batch_size=None):
        reply = {"cancel": cancel, "after_cancel": 0, "finish": None, "tokens": None}
        self.replies.append(reply)
        out = self.model.generate(prompts, params, cancel, batch_size)
        reply["finish"], reply["tokens"] = out[0].finish_reason, out[0].completion_tokens
        return out


class Broken(Spy):
    """A model whose generation fails as a bug would, with internals in the exception's text."""

    def stream_chat(self, messages, params, cancel=None, tools=None):
        yield from self.model.stream_chat(messages, params, cancel, tools=tools) if messages[-1]["content"] == "ok" \
            else ()
        raise RuntimeError("CUDA error at /secret/internal/path.cu:42")


def manager_of(model) -> ModelManager:
    manager = ModelManager(loader=lambda *a: model)
    manager.load(LoadRequest("tiny-random"))
    return manager


@pytest.fixture(scope="module")
def api(tiny):
    return TestClient(build_api(manager_of(tiny)), raise_server_exceptions=False)


def assert_openai_error(r: httpx.Response, status: int, *fragments: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    message = body["error"]["message"]
    assert message.endswith(".") and "\n" not in message and "Traceback" not in message
    for f in fragments:
        assert f in message
    return body["error"]


@contextlib.contextmanager
def live(app):
    """`app` served by uvicorn on a free port in a thread of this process (a real socket a client can drop)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# ---- every status in OpenAI's shape ------------------------------------------------------------------------------
def test_every_error_status_has_openais_shape_and_one_sentence(tiny, api):
    assert_openai_error(api.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}),
                        400, "not valid JSON")
    keyed = TestClient(build_api(manager_of(tiny), api_key="k"))
    assert_openai_error(keyed.get("/v1/models"), 401, "API key")
    assert_openai_error(api.get("/v1/engines"), 404, "There is no route /v1/engines")
    assert_openai_error(api.get("/v1/models/gpt-4o"), 404, "does not exist here")
    assert_openai_error(api.put("/v1/chat/completions", json={}), 405, "use POST")
    assert_openai_error(api.post("/v1/chat/completions", content=b"x" * (MAX_BODY_BYTES + 1),
                                 headers={"content-type": "application/json"}), 413, "MiB")
    empty = TestClient(build_api(ModelManager(loader=lambda *a: None)))
    assert_openai_error(empty.post("/v1/chat/completions", json={"messages": HI}), 503, "No model is loaded")


def test_a_body_over_the_limit_without_a_length_is_a_413(api):
    def chunks():  # sent chunked: no Content-Length to refuse it by
        for _ in range(MAX_BODY_BYTES // 2**20 + 1):
            yield b" " * 2**20
        yield b'{"messages": []}'

    assert_openai_error(api.post("/tokenize", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_a_failure_inside_the_model_is_a_500_sentence_without_its_internals(tiny):
    broken = TestClient(build_api(manager_of(Broken(tiny))), raise_server_exceptions=False)
    error = assert_openai_error(broken.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 4}), 500,
                                "RuntimeError", "log")
    assert "secret" not in error["message"] and error["type"] == "server_error"
    # Part way through a stream, the error is the last event, in the same words.
    r = broken.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "ok"}], "max_tokens": 4,
                                                   "stream": True})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert "secret" not in r.text and events[-1]["error"]["message"] == error["message"]


@pytest.mark.parametrize("raw, param", [
    (b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}', "temperature"),
    (b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": Infinity}', "temperature"),
    (b'{"messages": [{"role": "user", "content": "Hi"}], "top_p": -Infinity}', "top_p"),
    (b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": 1e999}', "temperature"),
    (b'{"messages": [{"role": "user", "content": "Hi"}], "seed": 1000000000000000000000000000000}', "seed"),
    (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages"),
    (b'{"messages": [{"role": "user", "content": {"text": "Hi"}}]}', "messages"),
    (b'{"messages": {"role": "user", "content": "Hi"}}', "messages"),
    (b'{"messages": [{"role": "user", "content": "Hi"}], "stream": "yes"}', "stream"),
    (b'{"prompt": "\\udfff", "max_tokens": 1}', "prompt"),
    (b'{"prompt": "x", "max_tokens": 1, "repetition_penalty": NaN}', "repetition_penalty"),
    (b'{"prompt": "x", "max_tokens": 1, "frequency_penalty": Infinity}', "frequency_penalty"),
    (b'{"prompt": "\\ud83d"}', "prompt"),
    (b'[' * 100_000 + b']' * 100_000, None),  # nested past the JSON reader's recursion limit
])
def test_hostile_bodies_are_a_400_sentence_not_a_500(api, raw, param):
    path = "/v1/completions" if b'"prompt"' in raw else "/v1/chat/completions"
    error = assert_openai_error(api.post(path, content=raw, headers={"content-type": "application/json"}), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert api.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 1}).status_code == 200


def test_a_reply_too_long_for_any_context_is_refused_before_decoding(api):
    error = assert_openai_error(api.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2**40}), 400)
    assert error["param"] == "max_tokens" and "1,048,576" in error["message"]


# ---- a client that goes away ------------------------------------------------------------------------------------
@pytest.mark.parametrize("route, body", [
    ("/v1/chat/completions", {"messages": HI, "max_tokens": LONG, "ignore_eos": True}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": LONG, "ignore_eos": True, "stream": True}),
    ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": LONG, "ignore_eos": True}),
], ids=["chat", "chat-stream", "completion"])
def test_a_client_that_goes_away_cancels_its_generation(tiny, route, body):
    spy = Spy(tiny)
    with live(build_api(manager_of(spy))) as url:
        if body.get("stream"):
            with httpx.stream("POST", url + route, json=body, timeout=30) as r:
                lines = r.iter_lines()
                assert any('"content"' in next(lines) for _ in range(4))
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url + route, json=body, timeout=1.5)
        left = time.monotonic()
        reply = spy.replies[0]
        assert reply["cancel"].wait(10), "the server did not cancel the generation of a client that left"
        noticed = time.monotonic() - left
        t = time.monotonic()
        r = httpx.post(url + "/v1/chat/completions", json={"messages": HI, "max_tokens": 2}, timeout=60)
        answered = time.monotonic() - t
    assert r.status_code == 200
    assert reply["finish"] == "cancelled" and reply["tokens"] < LONG // 2, reply
    assert reply["after_cancel"] <= 2, reply  # stopped at the next decode step, not at max_tokens
    print(f"{route}{' stream' if body.get('stream') else ''}: cancel set {noticed:.2f} s after the client left, "
          f"{reply['tokens']} of {LONG} tokens made; the next request answered in {answered:.2f} s")
    assert answered < 20


# ---- the page's login guards /v1 ---------------------------------------------------------------------------------
def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_a_login_guards_every_route_but_health(tiny):
    api = TestClient(build_api(manager_of(tiny), login=("alice", "s3cret")))
    for r in (api.get("/v1/models"), api.get("/v1/models", headers=basic("alice", "wrong")),
              api.get("/v1/models", headers=basic("mallory", "s3cret")),
              api.get("/v1/models", headers={"Authorization": "Basic !!not-base64"}),
              api.get("/v1/models", headers={"Authorization": "Bearer s3cret"}),
              api.post("/v1/chat/completions", json={"messages": HI}),
              api.post("/v1/completions", content=b"{not json"), api.post("/tokenize", json={"prompt": "x"})):
        assert_openai_error(r, 401, "login")
        assert r.headers["www-authenticate"].startswith("Basic")
    assert api.get("/v1/models", headers=basic("alice", "s3cret")).json()["data"][0]["id"] == "tiny-random"
    assert api.get("/health").status_code == 200  # says only whether a model is loaded
    both = TestClient(build_api(manager_of(tiny), api_key="k", login=("alice", "s3cret")))
    assert both.get("/v1/models", headers={"Authorization": "Bearer k"}).status_code == 200
    assert both.get("/v1/models", headers=basic("alice", "s3cret")).status_code == 200
    assert_openai_error(both.get("/v1/models", headers={"Authorization": "Bearer s3cret"}), 401, "Bearer KEY")

