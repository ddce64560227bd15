"""What the OpenAI API gives beyond one plain reply, called with the official openai SDK against a real server
(tiny-random in a subprocess): several rows (`n`), forced tool calls (`tool_choice` "required" or named), chat
log-probabilities streamed and not, prompts as token ids, usage and `system_fingerprint` on every reply, and
vLLM's /tokenizer_info and /detokenize."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from lab.interface import SamplingParams
from tests.conftest import WEATHER

pytestmark = pytest.mark.slow  # a server in a subprocess

HELLO = [{"role": "user", "content": "Say hello. 你好"}]
ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
FINGERPRINT = "qwen-lab/tiny-random/fp32/plain"  # a CPU: Transformers' generate, not the engine
NO_PENALTY = {"repetition_penalty": 1.0}  # so a greedy token is its distribution's top


@pytest.fixture(scope="module")
def client(open_server):
    return openai.OpenAI(base_url=open_server + "/v1", api_key="unused", max_retries=0)


def rows(chunks) -> dict[int, str]:
    out: dict[int, str] = {}
    for c in chunks:
        for choice in c.choices:
            out[choice.index] = out.get(choice.index, "") + (choice.delta.content or "")
    return out


def test_n_rows_each_run_with_the_request_seed_plus_their_index(client):
    many = client.chat.completions.create(model="tiny-random", messages=HELLO, max_tokens=8, n=3, seed=40)
    assert [c.index for c in many.choices] == [0, 1, 2]
    alone = [client.chat.completions.create(model="tiny-random", messages=HELLO, max_tokens=8, seed=40 + k)
             for k in range(3)]
    assert [c.message.content for c in many.choices] == [a.choices[0].message.content for a in alone]
    assert len({c.message.content for c in many.choices}) > 1  # sampled rows differ
    # Usage: the prompt once, every row's tokens.
    assert many.usage.prompt_tokens == alone[0].usage.prompt_tokens
    assert many.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    assert many.usage.total_tokens == many.usage.prompt_tokens + many.usage.completion_tokens
    # Streamed: the same rows, told apart by index, and the usage chunk counts them all.
    chunks = list(client.chat.completions.create(model="tiny-random", messages=HELLO, max_tokens=8, n=3, seed=40,
                                                 stream=True, stream_options={"include_usage": True}))
    assert rows(chunks) == {c.index: c.message.content for c in many.choices}
    assert sorted(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason) == \
        sorted(c.finish_reason for c in many.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == many.usage.completion_tokens


def test_n_rows_of_completions_follow_their_prompts(client, tiny):
    out = client.completions.create(model="tiny-random", prompt=["Hello", "1, 2, 3,"], max_tokens=4, n=2,
                                    temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]  # choice k is prompt k // n
    texts = [c.text for c in out.choices]
    local = [c.text for c in tiny.generate(["Hello", "1, 2, 3,"], SamplingParams(temperature=0, max_new_tokens=4))]
    assert texts == [local[0], local[0], local[1], local[1]]  # greedy rows are alike
    assert out.usage.prompt_tokens == tiny.count_tokens("Hello") + tiny.count_tokens("1, 2, 3,")
    sampled = client.completions.create(model="tiny-random", prompt="Once upon", max_tokens=6, n=2, seed=9)
    one = client.completions.create(model="tiny-random", prompt="Once upon", max_tokens=6, seed=10)
    assert sampled.choices[1].text == one.choices[0].text


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_a_forced_tool_choice_makes_the_call(client, choice):
    for seed in (1, 3):
        reply = client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "北京?"}],
                                               tools=[WEATHER, ADD], tool_choice=choice, max_tokens=80, seed=seed)
        out = reply.choices[0]
        assert out.finish_reason == "tool_calls" and out.message.content is None, out.message
        (call,) = out.message.tool_calls
        args = json.loads(call.function.arguments)
        if choice == "required":
            assert call.function.name in ("get_current_weather", "add")
        else:
            assert call.function.name == "add"
        if call.function.name == "add":
            assert set(args) == {"a", "b"} and all(isinstance(v, int) for v in args.values())
        else:
            assert set(args) == {"location"} and isinstance(args["location"], str)
    # Streamed: the call arrives as a tool_calls delta.
    chunks = list(client.chat.completions.create(model="tiny-random", messages=HELLO, tools=[WEATHER, ADD],
                                                 tool_choice=choice, max_tokens=80, seed=1, stream=True))
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and json.loads(calls[0].function.arguments) is not None
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_a_named_function_must_be_offered(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-random", messages=HELLO, tools=[WEATHER],
                                       tool_choice={"type": "function", "function": {"name": "add"}})
    assert e.value.body["param"] == "tool_choice" and "not among the tools" in e.value.body["message"]


def test_chat_logprobs_and_top_logprobs(client):
    reply = client.chat.completions.create(model="tiny-random", messages=HELLO, max_tokens=6, temperature=0,
                                           logprobs=True, top_logprobs=3, extra_body=NO_PENALTY)
    plain = client.chat.completions.create(model="tiny-random", messages=HELLO, max_tokens=6, temperature=0,
                                           extra_body=NO_PENALTY)
    choice = reply.choices[0]
    assert choice.message.content == plain.choices[0].message.content  # asking for numbers changes no token
    content = choice.logprobs.content
    assert len(content) == reply.usage.completion_tokens == 6
    for entry in content:
        assert entry.bytes == list(entry.token.encode("utf-8")) and entry.logprob <= 0
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0], abs=1e-5)  # greedy, no penalty: each token is the top one
    # Without top_logprobs: the tokens' own numbers only.
    bare = client.chat.completions.create(model="tiny-random", messages=HELLO, max_tokens=6, temperature=0,
                                          logprobs=True, extra_body=NO_PENALTY)
    assert [e.top_logprobs for e in bare.choices[0].logprobs.content] == [[]] * 6
    assert [e.logprob for e in bare.choices[0].logprobs.content] == [e.logprob for e in content]
    # Streamed: a chunk per token, its text and its entry; the same numbers as above.
    chunks = list(client.chat.completions.create(model="tiny-random", messages=HELLO, max_tokens=6, temperature=0,
                                                 logprobs=True, top_logprobs=3, stream=True, extra_body=NO_PENALTY))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    assert rows(chunks) == {0: choice.message.content}


def test_token_id_prompts_read_as_their_text(client, tiny):
    text = "The capital of France is"
    ids = tiny.encode(text)
    by_text = client.completions.create(model="tiny-random", prompt=text, max_tokens=3, temperature=0, logprobs=2,
                                        echo=True)
    by_ids = client.completions.create(model="tiny-random", prompt=ids, max_tokens=3, temperature=0, logprobs=2,
                                       echo=True)
    assert by_ids.choices[0].text == by_text.choices[0].text and by_ids.usage == by_text.usage
    assert by_ids.choices[0].logprobs.token_logprobs == by_text.choices[0].logprobs.token_logprobs
    assert by_ids.choices[0].logprobs.text_offset == by_text.choices[0].logprobs.text_offset
    batch = client.completions.create(model="tiny-random", prompt=[ids, tiny.encode("Hello")], max_tokens=3,
                                      temperature=0)
    assert [c.text for c in batch.choices] == [
        c.text for c in tiny.generate([text, "Hello"], SamplingParams(temperature=0, max_new_tokens=3))]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-random", prompt=[10**9], max_tokens=1)
    assert "is not in tiny-random's vocabulary" in e.value.body["message"]


def test_every_reply_has_usage_and_a_system_fingerprint(client):
    chat = client.chat.completions.create(model="tiny-random", messages=HELLO, max_tokens=4)
    done = client.completions.create(model="tiny-random", prompt="Hi", max_tokens=4)
    for reply in (chat, done):
        assert reply.system_fingerprint == FINGERPRINT
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens > 0
    for create, fields in ((client.chat.completions.create, {"messages": HELLO}),
                           (client.completions.create, {"prompt": "Hi"})):
        chunks = list(create(model="tiny-random", max_tokens=4, stream=True, stream_options={"include_usage": True},
                             **fields))
        assert {c.system_fingerprint for c in chunks} == {FINGERPRINT}
        assert all(c.usage is None for c in chunks[:-1]) and chunks[-1].choices == []
        used = chunks[-1].usage
        assert used.completion_tokens > 0 and used.total_tokens == used.prompt_tokens + used.completion_tokens


def test_tokenizer_info_and_detokenize(open_server, tiny):
    info = httpx.get(open_server + "/tokenizer_info").json()
    assert info["tokenizer_class"] == type(tiny.tok).__name__ and info["eos_token"] == tiny.tok.eos_token
    assert info["chat_template"] == tiny.tok.chat_template and info["model_max_length"] == 4096
    ids = httpx.post(open_server + "/tokenize", json={"prompt": "Say hello. 你好"}).json()["tokens"]
    assert httpx.post(open_server + "/detokenize", json={"tokens": ids}).json() == {"prompt": "Say hello. 你好"}
    r = httpx.post(open_server + "/detokenize", json={"tokens": [-1]})
    assert r.status_code == 400 and "vocabulary" in r.json()["error"]["message"]
