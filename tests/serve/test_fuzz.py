"""lab.serve fuzzed from its own OpenAPI schema with schemathesis, in this process (ASGI, no socket, no network), over
tiny-random (each reply cut to a few tokens, so that no generated request decodes for long): requests that fit the
schema and requests that break it, on every route. No answer may be a 5xx, every error has OpenAI's shape, and the model still
answers a plain chat afterwards. The figures (requests, statuses) are printed: `pytest -s` shows them."""

from __future__ import annotations

import collections
import os
import time
from dataclasses import replace

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (schemathesis brings hypothesis)
from schemathesis import GenerationMode  # noqa: E402

from lab.models.manager import LoadRequest, ModelManager  # noqa: E402
from lab.serve.app import build_api  # noqa: E402

# per generation mode; about half a minute in all on two cores (LAB_FUZZ_EXAMPLES=2000 for a long hunt)
EXAMPLES = int(os.environ.get("LAB_FUZZ_EXAMPLES", 150))
HI = [{"role": "user", "content": "Hi"}]


SHORT = 4  # new tokens at most, whatever a request asks (the server checks what it asks against the context first)


class Short:
    """tiny-random, each generation cut to SHORT new tokens."""

    def __init__(self, model) -> None:
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def stream_chat(self, messages, params, cancel=None, tools=None):
        return self.model.stream_chat(messages, replace(params, max_new_tokens=SHORT), cancel, tools=tools)

    def generate(self, prompts, params, cancel=None, batch_size=None):
        return self.model.generate(prompts, replace(params, max_new_tokens=SHORT), cancel, batch_size)

    def generate_logprobs(self, prompt, params, top=0, cancel=None):
        return self.model.generate_logprobs(prompt, replace(params, max_new_tokens=SHORT), top, cancel)


@pytest.fixture(scope="module")
def app(tiny):
    manager = ModelManager(loader=lambda *a: Short(tiny))
    manager.load(LoadRequest("tiny-random"))
    return build_api(manager)


def test_fuzzing_the_schema_finds_no_server_error_and_the_model_still_answers(app):
    schema = schemathesis.openapi.from_dict(app.openapi())
    schema.app = app  # calls go through the ASGI transport, in this process
    statuses, failures, t0 = collections.Counter(), [], time.monotonic()

    def call(case) -> None:
        r = case.call()
        statuses[r.status_code] += 1
        if r.status_code >= 500:
            failures.append(f"{r.status_code} for {case.method} {case.path} {case.body!r:.300}: {r.text[:300]}")
        elif r.status_code >= 400:
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"].endswith("."), r.text

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        run = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 150,
                       suppress_health_check=list(HealthCheck))(given(case=schema.as_strategy(mode))(call))
        run()
    took = time.monotonic() - t0
    print(f"\nfuzzed lab.serve: {sum(statuses.values())} requests in {took:.0f} s, statuses "
          f"{dict(sorted(statuses.items()))}, {len(failures)} server errors")
    assert not failures, "\n".join(failures[:10])
    assert statuses and all(s < 500 for s in statuses)

    from fastapi.testclient import TestClient

    reply = TestClient(app).post("/v1/chat/completions", json={"messages": HI, "max_tokens": 4, "temperature": 0})
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["role"] == "assistant"
