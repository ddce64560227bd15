"""Several replies decoded together on tiny-random (HFModel.stream_many, rows of the engine's scheduler on a CPU):
rows streamed together, per-row settings and seeds, and greedy rows equal to the row alone."""

from __future__ import annotations

import threading

import pytest

from lab.errors import LabError
from lab.interface import ChatModel, SamplingParams
from tests.conftest import wait_scheduler_idle


def chat(text: str, system: str = "Be brief.") -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def collect(stream, n: int):
    """Texts, last stats and the (row, is_final) order of every chunk."""
    texts, stats, order = [""] * n, [None] * n, []
    for row, chunk in stream:
        assert stats[row] is None, "a row yielded after its final chunk"
        texts[row] += chunk.text
        stats[row] = chunk.stats
        order.append((row, chunk.stats is not None))
    return texts, stats, order


def test_the_protocol_has_it(tiny):
    assert isinstance(tiny, ChatModel) and callable(tiny.stream_many)


def test_rows_decode_together_and_stream_interleaved(tiny):
    prompts = [chat("Tell me about foxes."), chat("Tell me about cats."), chat("讲一个故事。", "你很简洁。")]
    params = [SamplingParams(temperature=0.8, max_new_tokens=24, seed=3),
              SamplingParams(temperature=0, max_new_tokens=24),
              SamplingParams(temperature=1.2, top_k=0, top_p=0.9, max_new_tokens=24)]
    wait_scheduler_idle(tiny)
    steps = tiny.scheduler.steps
    texts, stats, order = collect(tiny.stream_many(prompts, params), 3)
    made = max(s.completion_tokens for s in stats)
    assert tiny.scheduler.steps - steps <= made + 2, "the rows shared their decode steps"
    first_final = next(i for i, (_, final) in enumerate(order) if final)
    assert {row for row, _ in order[:first_final]} == {0, 1, 2}, "every row streamed text before any row ended"
    for r, s in enumerate(stats):
        assert s is not None and s.prompt_tokens == tiny.count_tokens(tiny.render(prompts[r]))
        assert 0 < s.completion_tokens <= 24 and s.ttft_s > 0 and s.queued_s is not None
        assert s.finish_reason in ("stop", "length") and texts[r]
        if s.completion_tokens > 1:
            assert s.decode_tokens_per_s > 0


def test_greedy_rows_equal_each_row_generated_alone(tiny):
    # Equal-length prompts (no padding), different settings per row: each row's text is its own generate()'s.
    prompts = [chat("Tell me about cats."), chat("Tell me about bears.")]
    assert len({tiny.count_tokens(tiny.render(p)) for p in prompts}) == 1
    params = [SamplingParams(temperature=0, max_new_tokens=20), SamplingParams(temperature=0, max_new_tokens=32,
                                                                              repetition_penalty=1.3)]
    texts, stats, _ = collect(tiny.stream_many(prompts, params), 2)
    for p, q, text in zip(prompts, params, texts):
        assert text == tiny.generate([p], q)[0].text
    # A sampled row beside a greedy one leaves the greedy row as it is.
    mixed = [params[0], SamplingParams(temperature=1.0, max_new_tokens=32, seed=5)]
    assert collect(tiny.stream_many(prompts, mixed), 2)[0][0] == texts[0]


def test_per_row_max_new_tokens_and_seeded_reproducibility(tiny):
    prompts = [chat("one"), chat("two")]
    params = [SamplingParams(temperature=0.9, max_new_tokens=5, seed=11),
              SamplingParams(temperature=0.9, max_new_tokens=40, seed=12)]
    texts, stats, _ = collect(tiny.stream_many(prompts, params), 2)
    for s, p in zip(stats, params):
        assert s.completion_tokens <= p.max_new_tokens
        assert (s.finish_reason == "length") == (s.completion_tokens == p.max_new_tokens)
    again, _, _ = collect(tiny.stream_many(prompts, params), 2)
    assert again == texts, "each row has its own seed, reported in its stats"
    assert [s.seed for s in stats] == [11, 12]


def test_a_stop_string_ends_its_row_only(tiny):
    prompts = [chat("alpha"), chat("beta")]
    free = SamplingParams(temperature=0, max_new_tokens=30)
    plain, _, _ = collect(tiny.stream_many(prompts, [free, free]), 2)
    stop = next((ch for ch in plain[0][3:] if not ch.isspace()), None)
    assert stop is not None
    params = [SamplingParams(temperature=0, max_new_tokens=30, stop=(stop,)), free]
    texts, stats, _ = collect(tiny.stream_many(prompts, params), 2)
    assert texts[0] == plain[0][:plain[0].index(stop)] and stats[0].finish_reason == "stop"
    assert texts[1] == plain[1]


def test_cancel_ends_every_row(tiny):
    cancel = threading.Event()
    params = [SamplingParams(temperature=0.7, max_new_tokens=2000, seed=1)] * 2
    seen = 0
    texts, stats = ["", ""], [None, None]
    for row, chunk in tiny.stream_many([chat("a"), chat("b")], params, cancel):
        texts[row] += chunk.text
        stats[row] = chunk.stats or stats[row]
        seen += 1
        if seen == 10:
            cancel.set()
    assert [s.finish_reason for s in stats] == ["cancelled", "cancelled"]
    assert all(s.completion_tokens < 2000 for s in stats)


def test_a_consumer_that_leaves_stops_the_generation(tiny):
    params = [SamplingParams(temperature=0.7, max_new_tokens=2000, seed=1)] * 2
    stream = tiny.stream_many([chat("a"), chat("b")], params)
    next(stream)
    stream.close()
    assert tiny.lock.acquire(timeout=5), "the generating thread let go of the model"
    tiny.lock.release()


def test_too_long_and_bad_requests_are_one_sentence(tiny):
    long = chat("word " * 5000)
    with pytest.raises(LabError, match=r"Prompt 2 \(.* tokens\) plus its max new tokens"):
        list(tiny.stream_many([chat("hi"), long], [SamplingParams(max_new_tokens=8)] * 2))
    with pytest.raises(LabError, match="2 prompts need 2 sets"):
        list(tiny.stream_many([chat("a"), chat("b")], [SamplingParams()]))
