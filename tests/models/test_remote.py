"""`lab.remote`: a model behind an OpenAI-compatible server, here `python -m lab.serve --model tiny-random`
in a subprocess, used through the same interface as the local model and compared with it."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from lab.chat.tools import parse_tool_calls
from lab.errors import LabError
from lab.interface import ChatModel, SamplingParams
from lab.models.remote import RemoteModel, connect, estimate_tokens, parse_spec, wire_messages
from tests.conftest import WEATHER, free_port, serving

KEY = "sk-remote-test"
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a joke. 讲个笑话"}]
GREEDY = SamplingParams(temperature=0, max_new_tokens=10)


@pytest.fixture(scope="module")
def server():
    with serving(["-m", "lab.serve", "--model", "tiny-random", "--api-key", KEY], "remote-server.log") as url:
        yield url + "/v1"


@pytest.fixture(scope="module")
def remote(server):
    model = connect(f"openai:{server}", api_key=KEY)  # the one model the server lists
    yield model
    model.close()


@pytest.mark.slow
def test_connect_describes_the_served_model(remote, server):
    assert isinstance(remote, ChatModel)
    info = remote.info
    assert (info.name, info.source, info.quant, info.device, info.context_length) == \
        ("tiny-random", server, "remote", "remote", 4096)
    from lab.models import load_model, resolve_spec

    assert resolve_spec(f"openai:{server}#tiny-random", "cpu").name == f"openai:{server}#tiny-random"
    again = load_model(f"openai:{server}#tiny-random", api_key=KEY, context=2048)
    assert again.info.context_length == 2048
    again.close()


@pytest.mark.slow
def test_chat_streams_the_same_reply_as_the_local_model(remote, tiny):
    chunks = list(remote.stream_chat(HELLO, GREEDY))
    local = [c for c in tiny.stream_chat(HELLO, GREEDY)]
    assert "".join(c.text for c in chunks) == "".join(c.text for c in local)
    stats, expected = chunks[-1].stats, local[-1].stats
    assert (stats.prompt_tokens, stats.completion_tokens, stats.finish_reason) == \
        (expected.prompt_tokens, expected.completion_tokens, expected.finish_reason)
    assert stats.ttft_s > 0 and stats.total_s >= stats.ttft_s and stats.seed is not None
    assert remote.count_chat_tokens(HELLO) == tiny.count_chat_tokens(HELLO)  # the server's /tokenize
    assert remote.count_tokens("hello world 你好") == tiny.count_tokens("hello world 你好")


@pytest.mark.slow
def test_stream_many_streams_every_row(remote, tiny):
    prompts = [HELLO, [{"role": "user", "content": "1+1=?"}]]
    texts, stats = ["", ""], [None, None]
    for row, chunk in remote.stream_many(prompts, [GREEDY, replace_max(GREEDY, 4)]):
        texts[row] += chunk.text
        stats[row] = chunk.stats or stats[row]
    assert texts[1] == "".join(c.text for c in tiny.stream_chat(prompts[1], replace_max(GREEDY, 4)))
    assert texts[0] == "".join(c.text for c in tiny.stream_chat(HELLO, GREEDY))
    assert [s.completion_tokens for s in stats] == [10, 4]


def replace_max(params: SamplingParams, n: int) -> SamplingParams:
    from dataclasses import replace

    return replace(params, max_new_tokens=n)


@pytest.mark.slow
def test_generate_sends_text_to_completions_and_chats_to_chat(remote, tiny):
    rendered = remote.render(HELLO)
    assert "[user]\nTell me a joke." in rendered and rendered.endswith("[assistant]\n")
    got = remote.generate(["1, 2, 3,", rendered, HELLO], replace_max(GREEDY, 6))
    assert got[0].text == tiny.generate(["1, 2, 3,"], replace_max(GREEDY, 6))[0].text
    chat = "".join(c.text for c in tiny.stream_chat(HELLO, replace_max(GREEDY, 6)))
    assert got[1].text == got[2].text == chat
    assert got[1].prompt_tokens == tiny.count_chat_tokens(HELLO) and got[1].completion_tokens == 6


def counting(server: str, bodies: list) -> openai.OpenAI:
    """An SDK client for `server` that appends the JSON body of every POST it sends to `bodies`."""
    def seen(request: httpx.Request) -> None:
        if request.method == "POST":
            bodies.append(json.loads(request.content))

    return openai.OpenAI(base_url=server, api_key=KEY, http_client=httpx.Client(event_hooks={"request": [seen]}))


@pytest.mark.slow
def test_score_choices_match_the_local_model_both_ways(server, tiny):
    prompt = "Question: which letter comes first?\nAnswer:"
    # Choices among the server's 20 likeliest next tokens are read from one request...
    sdk = openai.OpenAI(base_url=server, api_key=KEY)
    top = sdk.completions.create(model="tiny-random", prompt=prompt, max_tokens=1, logprobs=20,
                                 temperature=0).choices[0].logprobs.top_logprobs[0]
    sdk.close()
    ctx = tiny.encode(prompt)
    likely = [t for t in sorted(top, key=top.get, reverse=True)  # tokens that stay one token after the prompt
              if len(ids := tiny.encode(prompt + t)[len(ctx):]) == 1 and tiny.tok.decode(ids) == t][:3]
    assert len(likely) >= 2
    calls = []
    remote = connect(f"openai:{server}", client=counting(server, calls))
    try:
        fast = remote.score_choices([prompt], likely)
        assert len(calls) == 1
        calls.clear()
        slow = remote.score_choices([prompt + " ", prompt], [" A", " B", " C D"])  # ...others by echo
        assert len(calls) == 4 and sum(bool(c.get("echo")) for c in calls) == 2
    finally:
        remote.close()
    assert fast[0] == pytest.approx(tiny.score_choices([prompt], likely)[0], abs=1e-4)
    assert slow[0] == pytest.approx(tiny.score_choices([prompt + " "], [" A", " B", " C D"])[0], abs=1e-4)
    assert slow[1] == pytest.approx(tiny.score_choices([prompt], [" A", " B", " C D"])[0], abs=1e-4)


def _samples(runs_dir, run_id):
    from lab.eval.store import RunStore

    return RunStore.open(runs_dir).samples(run_id)


def _run_id(stdout: str) -> str:
    return next(x for x in stdout.splitlines() if x.startswith("run ") and " saved in " in x).split()[1]


@pytest.mark.slow
def test_remote_mmlu_gives_the_local_predictions(server, data_dir, tmp_path, capsys):
    from lab.eval.__main__ import main

    runs = str(tmp_path / "runs")
    common = ["--limit", "20", "--shots", "5", "--runs-dir", runs, "--data-dir", str(data_dir)]
    # `python -m lab.eval mmlu ...`, its main() called here (a second process would only add start-up time).
    assert main(["mmlu", "--model", f"openai:{server}#tiny-random", "--api-key", KEY, *common]) == 0
    out, err = capsys.readouterr()
    assert "model: tiny-random · remote" in err and "20/20" in err
    remote_run = _run_id(out)
    assert main(["mmlu", "--model", "tiny-random", *common]) == 0  # the same evaluation on the local model
    local_run = _run_id(capsys.readouterr().out)
    a, b = _samples(runs, remote_run), _samples(runs, local_run)
    assert [s.key for s in a] == [s.key for s in b] and len(a) == 20
    assert [s.extracted for s in a] == [s.extracted for s in b]
    for x, y in zip(a, b):
        for letter, value in y.detail["logprobs"].items():
            assert x.detail["logprobs"][letter] == pytest.approx(value, abs=1e-4)
    # gen mode: the chats go to the server's chat endpoint; the letter is read from each reply.
    assert main(["mmlu", "--model", f"openai:{server}#tiny-random", "--api-key", KEY, "--mode", "gen", "--limit", "3",
                 "--max-new-tokens", "6", "--runs-dir", runs, "--data-dir", str(data_dir)]) == 0
    gen = _samples(runs, _run_id(capsys.readouterr().out))
    # --resume goes back to the server the run used (a finished run just prints its summary).
    assert main(["mmlu", "--resume", remote_run, "--api-key", KEY, "--runs-dir", runs]) == 0
    assert "model: tiny-random · remote" in capsys.readouterr().err
    assert len(gen) == 3 and all(s.prompt.startswith("[system]") or s.prompt.startswith("[user]") for s in gen)
    assert all(s.detail["completion_tokens"] == 6 for s in gen)


SAMPLED = ["--temperature", "0.8", "--batch-size", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("benchmark, args", [
    ("mmlu", ["--mode", "gen", "--limit", "8", "--max-new-tokens", "16"]),
    ("humaneval", ["--limit", "4", "--max-new-tokens", "48"]),
    ("mmlu", ["--mode", "gen", "--limit", "4", "--max-new-tokens", "8", *SAMPLED]),
    ("humaneval", ["--mode", "completion", "--limit", "2", "--max-new-tokens", "24", *SAMPLED]),
], ids=["mmlu-gen-greedy", "humaneval-greedy", "mmlu-gen-sampled", "humaneval-completion-sampled"])
def test_runs_through_the_server_equal_the_local_runs(server, data_dir, tmp_path, capsys, benchmark, args):
    """`python -m lab.eval` through `--model openai:...#tiny-random` gives the local run's replies sample for
    sample: every sampling value reaches the server, so it cannot fall back on its own defaults. The stored
    prompts differ by design (the server applies the template).

    tiny-random's greedy replies repeat the prompt's last token ("\\n" after the chat template) with a
    margin no 1.05 penalty overturns, so the greedy runs pass even when a server applies its defaults;
    the sampled runs are the ones that catch a top_k or repetition_penalty that did not arrive. They run
    one item per batch: a local batch draws all its rows from one seeded stream, a server each request
    from its own seed, and with one row both are the same."""
    from lab.eval.__main__ import main

    common = [benchmark, *args, "--runs-dir", str(tmp_path), "--data-dir", str(data_dir)]
    assert main([*common, "--model", f"openai:{server}#tiny-random", "--api-key", KEY]) == 0
    remote_run = _run_id(capsys.readouterr().out)
    assert main([*common, "--model", "tiny-random"]) == 0
    local_run = _run_id(capsys.readouterr().out)
    a, b = _samples(tmp_path, remote_run), _samples(tmp_path, local_run)
    assert [s.key for s in a] == [s.key for s in b] and len(a) == int(args[args.index("--limit") + 1])
    if "--temperature" in args:  # replies that tell settings apart, not one token repeated
        assert len({x.output for x in a}) == len(a)
    differ = [(x.key, x.output, y.output) for x, y in zip(a, b)
              if (x.output, x.extracted, x.correct) != (y.output, y.extracted, y.correct)]
    assert not differ, f"{len(differ)} of {len(a)} samples differ (remote, local): {differ}"


@pytest.mark.slow
def test_errors_are_one_sentence(server, remote):
    port = free_port()
    with pytest.raises(LabError, match=rf"Cannot reach the OpenAI-compatible server at http://127.0.0.1:{port}/v1 "):
        connect(f"openai:http://127.0.0.1:{port}/v1#m")
    with pytest.raises(LabError, match="refused the API key"):
        connect(f"openai:{server}", api_key="wrong")
    with pytest.raises(LabError, match="does not serve 'gpt-4o'; it serves tiny-random"):
        connect(f"openai:{server}#gpt-4o", api_key=KEY)
    with pytest.raises(LabError, match="needs a base URL"):
        parse_spec("openai:localhost:8000")
    with pytest.raises(LabError, match="exceeds tiny-random's context"):
        list(remote.stream_chat([{"role": "user", "content": "word " * 5000}], GREEDY))


def fake(handler, requests: list | None = None) -> RemoteModel:
    """`connect` to `handler` (an httpx MockTransport) instead of a server; it lists model m, without a context
    length. The requests it gets are appended to `requests`."""
    def serve(request: httpx.Request) -> httpx.Response:
        if requests is not None:
            requests.append(request)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model", "created": 0,
                                                                         "owned_by": "fake"}]})
        return handler(request)

    client = openai.OpenAI(base_url="http://fake/v1", api_key="k", max_retries=2,
                           http_client=httpx.Client(transport=httpx.MockTransport(serve)))
    return connect("openai:http://fake/v1", client=client)


def test_a_server_without_logprobs_says_to_use_gen_mode():
    def ollama_like(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [{"index": 0, "text": " B", "finish_reason": "length"}]})

    with pytest.raises(LabError, match=r"^logprob mode needs a server that returns log-probabilities.*--mode gen\.$"):
        fake(ollama_like).score_choices(["Answer:"], [" A", " B"])


def test_tool_calls_come_back_as_tool_call_blocks_and_refused_extensions_are_dropped():
    seen = []

    def vllm_like(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        if "top_k" in body:
            return httpx.Response(400, json={"error": {"message": "Unrecognized request argument supplied: top_k"}})
        assert body["tools"] == [WEATHER] and body["messages"][1]["tool_calls"][0]["function"]["arguments"] == "{}"
        deltas = [{"role": "assistant", "content": ""},
                  {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                   "function": {"name": "get_current_weather", "arguments": ""}}]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\": "}}]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": "\"北京\"}"}}]}]
        events = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        events += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
                   {"choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 20}}]
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    model = fake(vllm_like)
    history = [{"role": "user", "content": "天气?"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"type": "function", "function": {"name": "get_current_weather", "arguments": {}}}]},
               {"role": "tool", "content": "{}"}, {"role": "user", "content": "again"}]
    chunks = list(model.stream_chat(history, SamplingParams(seed=1), tools=[WEATHER]))
    parsed = parse_tool_calls("".join(c.text for c in chunks), [WEATHER])
    assert [(c.name, c.arguments) for c in parsed.calls] == [("get_current_weather", {"location": "北京"})]
    assert chunks[-1].stats.completion_tokens == 20 and chunks[-1].stats.finish_reason == "stop"
    assert "top_k" in seen[0] and "top_k" not in seen[1] and "repetition_penalty" not in seen[1]
    assert "ignore_eos" not in seen[1] and seen[1]["temperature"] == 0.7 and seen[1]["seed"] == 1
    assert seen[1]["messages"][2]["tool_call_id"] == seen[1]["messages"][1]["tool_calls"][0]["id"]
    list(model.stream_chat(history, SamplingParams(seed=2), tools=[WEATHER]))  # later requests: without them
    assert len(seen) == 3 and "top_k" not in seen[2] and seen[2]["seed"] == 2


def test_every_sampling_value_is_sent_explicitly():
    """Off is sent as off (top_k -1, repetition_penalty 1.0), so a server's own defaults (Qwen's 20 and 1.05)
    never apply and greedy runs match the local model's."""
    seen = []

    def completions(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        if request.url.path.endswith("/chat/completions"):
            return httpx.Response(200, json={"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                             "choices": [{"index": 0, "finish_reason": "length", "message": {
                                                 "role": "assistant", "content": "hi"}}],
                                             "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
        return httpx.Response(200, json={"id": "c", "object": "text_completion", "created": 0, "model": "m",
                                         "choices": [{"index": 0, "text": " 4", "finish_reason": "stop"}]})

    model = fake(completions)
    assert model.info.context_length == 32768 and "32,768 tokens is assumed" in model.info.notes[-1]
    greedy = SamplingParams(temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=5, seed=7)
    got = model.generate(["2+2=", HELLO], greedy)
    assert [(c.text, c.finish_reason) for c in got] == [(" 4", "stop"), ("hi", "length")]
    assert got[1].prompt_tokens == 3 and got[1].completion_tokens == 5
    by_route = {("messages" in b): b for b in seen}
    for i, body in enumerate([by_route[False], by_route[True]]):
        assert {k: body[k] for k in ("model", "temperature", "top_p", "max_tokens", "seed", "stop", "top_k",
                                     "repetition_penalty", "ignore_eos")} == \
            {"model": "m", "temperature": 0, "top_p": 1.0, "max_tokens": 5, "seed": 7 + i, "stop": None,
             "top_k": -1, "repetition_penalty": 1.0, "ignore_eos": False}
    seen.clear()
    model.generate(["x"], SamplingParams(top_k=40, repetition_penalty=1.1, stop=("\n",), ignore_eos=True, seed=1))
    assert {k: seen[0][k] for k in ("temperature", "top_p", "top_k", "repetition_penalty", "stop", "ignore_eos")} == \
        {"temperature": 0.7, "top_p": 0.8, "top_k": 40, "repetition_penalty": 1.1, "stop": ["\n"], "ignore_eos": True}


def test_a_refused_key_is_not_retried_and_a_busy_server_is():
    requests, replies = [], iter([503, 503, 200])

    def refusing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": "Invalid API key.", "code": "invalid_api_key"}})

    with pytest.raises(LabError, match=r"^The server at http://fake/v1 refused the API key \(401: Invalid API key\); "
                                       r"pass the right one"):
        list(fake(refusing, requests).stream_chat(HELLO, GREEDY))
    assert [r.url.path for r in requests] == ["/v1/models", "/v1/chat/completions"]

    def busy(request: httpx.Request) -> httpx.Response:
        status = next(replies)
        if status == 503:  # the SDK waits as long as the server asks before trying again
            return httpx.Response(503, json={"error": {"message": "busy"}}, headers={"retry-after-ms": "10"})
        return httpx.Response(200, json={"id": "c", "object": "text_completion", "created": 0, "model": "m",
                                         "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]})

    requests.clear()
    assert fake(busy, requests).generate(["x"], GREEDY)[0].text == "ok" and len(requests) == 1 + 3
    with pytest.raises(LabError, match=r"^The server at http://fake/v1 answered 404: no\.$"):
        fake(lambda r: httpx.Response(404, json={"error": {"message": "no."}})).generate(["x"], GREEDY)


def test_a_stream_that_fails_part_way_is_one_sentence():
    def failing(request: httpx.Request) -> httpx.Response:
        events = [{"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
                  {"error": {"message": "The GPU ran out of memory.\nTraceback ...", "type": "server_error"}}]
        return httpx.Response(200, text="".join(f"data: {json.dumps(e)}\n\n" for e in events),
                              headers={"content-type": "text/event-stream"})

    chunks = []
    with pytest.raises(LabError, match=r"^The server at http://fake/v1 failed mid-reply: The GPU ran out of memory\.$"):
        chunks.extend(fake(failing).stream_chat(HELLO, GREEDY))
    assert [c.text for c in chunks] == ["Hel"]


@pytest.mark.parametrize("listing", [{"text": "<html>busy</html>"}, {"json": {"models": []}}, {"json": [1, 2]},
                                     {"json": {"data": [{"id": "m", "max_model_len": 8192}, "junk"]}},
                                     {"status_code": 500, "text": "oops"}])
def test_a_model_list_in_another_shape_leaves_the_named_model(listing):
    client = openai.OpenAI(base_url="http://fake/v1", api_key="k", max_retries=0, http_client=httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(**{"status_code": 200, **listing}))))
    model = connect("openai:http://fake/v1#m", client=client)
    assert (model.model, model.info.context_length) == ("m", 8192 if "junk" in str(listing) else 32768)


def test_wire_messages_and_estimates():
    out = wire_messages([{"role": "assistant", "content": "x", "tool_calls": [
        {"id": "a", "function": {"name": "f", "arguments": {"k": "北京"}}}]}, {"role": "tool", "content": "1"}])
    assert out[0]["tool_calls"][0]["function"]["arguments"] == '{"k": "北京"}' and out[1]["tool_call_id"] == "a"
    assert estimate_tokens("hello world!") == 3 and estimate_tokens("你好") == 2


def test_requests_in_flight_follow_max_in_flight(monkeypatch):
    """generate and score_choices keep max_in_flight requests under way (--concurrency), no more."""
    import threading
    import time as clock

    lock, now, peak = threading.Lock(), [0], [0]

    def slow(request: httpx.Request) -> httpx.Response:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        clock.sleep(0.05)
        with lock:
            now[0] -= 1
        return httpx.Response(200, json={"id": "c", "object": "text_completion", "created": 0, "model": "m",
                                         "choices": [{"index": 0, "text": "ok", "finish_reason": "stop",
                                                      "logprobs": {"tokens": [" A"], "token_logprobs": [-0.5],
                                                                   "top_logprobs": [{" A": -0.5, " B": -1.5}],
                                                                   "text_offset": [0]}}]})

    model = fake(slow)
    assert model.max_in_flight == 4  # the default
    for n in (1, 16):
        model.max_in_flight, peak[0] = n, 0
        assert [c.text for c in model.generate(["x"] * 32, GREEDY)] == ["ok"] * 32
        assert peak[0] == n
    peak[0] = 0
    assert model.score_choices(["Answer:"] * 20, [" A", " B"]) == [[-0.5, -1.5]] * 20 and peak[0] == 16
    monkeypatch.setenv("LAB_CONCURRENCY", "8")
    assert fake(slow).max_in_flight == 8
    monkeypatch.setenv("LAB_CONCURRENCY", "0")
    with pytest.raises(LabError, match=r"^LAB_CONCURRENCY must be a whole number between 1 and 1,024, got 0\.$"):
        fake(slow)


def test_concurrency_is_for_a_served_model(tmp_path, capsys):
    from lab.eval.__main__ import main

    assert main(["mmlu", "--model", "tiny-random", "--concurrency", "8", "--limit", "2", "--runs-dir",
                 str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("--concurrency is for a model behind a server (--model "
                                                    "openai:URL#NAME); a model loaded here sizes its own batches "
                                                    "(--batch-size).")
    assert main(["mmlu", "--model", "tiny-random", "--concurrency", "0", "--runs-dir", str(tmp_path)]) == 2
    assert "error: --concurrency must be a whole number between 1 and 1,024, got 0." in capsys.readouterr().err
