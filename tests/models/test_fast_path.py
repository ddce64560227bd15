"""A Transformers model decoding through the engine, on the CPU (tiny-random, float32, no graphs): Compare's rows,
JSON mode, the page's replies with Stop, and shared-prefix letter scores all give the plain path's answers.
On CUDA the same code runs with graphs (`python -m lab.bench fast`)."""

from __future__ import annotations

import pytest
import torch

from lab.engine.prefix import prefix_groups
from lab.interface import SamplingParams
from tests.engine.test_decoder import plain_logits


@pytest.mark.slow
def test_shared_prefix_scores_equal_whole_prompt_scores(tiny, data_dir, tmp_path):
    from lab.eval.runner import EvalRequest, Runner
    from lab.eval.store import RunStore

    req = EvalRequest("mmlu", subjects=["anatomy", "astronomy"], limit=24, shots=5, seed=3)
    plan = Runner(RunStore.open(tmp_path)).plan(req)
    prompts = [it.prompt for it in plan.items]
    letters = [" A", " B", " C", " D"]
    assert any(n for n, idx in prefix_groups([tiny.encode(p) for p in prompts]) if len(idx) > 1)
    got = torch.tensor(tiny.score_choices(prompts, letters, batch_size=5))
    rows = [(ctx, [c[0] for c in conts]) for ctx, conts in tiny.scorer.split_choices(prompts, letters)]
    want = torch.tensor([tiny.scorer.forward_last([ctx], keep=1)[0, -1, cands].tolist() for ctx, cands in rows])
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_compare_rows_through_the_fast_path_match_generate(tiny, monkeypatch):
    """On CUDA `stream_many` decodes through lab.fast with each row's settings in the graph; here the same
    code runs eagerly on the CPU and must give what the batched generate() path gives for greedy rows."""
    prompts = [[{"role": "user", "content": q}] for q in ("Name a colour.", "Count to five, slowly please.")]
    params = [SamplingParams(temperature=0, repetition_penalty=1.2, max_new_tokens=12),
              SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=6)]

    def texts() -> list[str]:
        out = ["", ""]
        for row, chunk in tiny.stream_many(prompts, params):
            out[row] += chunk.text
        return out

    plain = texts()
    reason = tiny.fast_off_reason
    tiny.set_fast_path(True)
    calls = []
    monkeypatch.setattr(tiny.model, "generate", lambda *a, **k: calls.append(1))
    try:
        assert texts() == plain and not calls
    finally:
        tiny.set_fast_path(False)
        tiny.fast_off_reason = reason


@pytest.mark.parametrize("benchmark", ["mmlu", "ceval"])
def test_continuations_from_the_last_line_equal_whole_text_encoding(tiny, data_dir, tmp_path, benchmark):
    from lab.eval.runner import EvalRequest, Runner
    from lab.eval.store import RunStore

    items = Runner(RunStore.open(tmp_path)).plan(EvalRequest(benchmark, shots=5, limit=300, seed=5)).items
    prompts = [it.prompt for it in items]
    letters = [" A", " B", " C", " D"]
    got = tiny.scorer.split_choices(prompts, letters)
    for p, (ctx, conts) in zip(prompts, got):
        assert ctx == tiny.encode(p.rstrip(" "))
        assert conts == [tiny.encode(p + c.lstrip(" ") if p.endswith(" ") else p + c)[len(ctx):] for c in letters]


@pytest.fixture
def fast_tiny(tiny, monkeypatch):
    """tiny-random with the fast path switched on, as on CUDA (here without graphs), and generate() banned."""
    reason = tiny.fast_off_reason
    tiny.set_fast_path(True)

    def banned(*args, **kwargs):
        raise AssertionError("the fast path must not fall back to generate()")

    monkeypatch.setattr(tiny.model, "generate", banned)
    yield tiny
    tiny.set_fast_path(False)
    tiny.fast_off_reason = reason


ASK = [{"role": "user", "content": "Describe a student as JSON with a name and a list of integer scores."}]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"},
                                           "scores": {"type": "array", "items": {"type": "integer"}}},
          "required": ["name", "scores"]}


def test_json_mode_through_the_fast_path_parses_and_validates(fast_tiny):
    import json

    from lab.chat.json_mode import response_format, validate

    fmt = response_format(True, json.dumps(SCHEMA))
    for seed in range(3):
        chunks = list(fast_tiny.stream_chat(ASK, SamplingParams(seed=seed, max_new_tokens=96, response_format=fmt)))
        text = "".join(c.text for c in chunks)
        assert validate(text, fmt).valid, text
    small = list(fast_tiny.stream_chat(ASK, SamplingParams(seed=1, max_new_tokens=40, response_format=fmt)))
    assert validate("".join(c.text for c in small), fmt).valid and small[-1].stats.closed_early
    for out in fast_tiny.generate([ASK, ASK + [{"role": "user", "content": "again"}]],
                                  SamplingParams(temperature=0, max_new_tokens=96, response_format=fmt)):
        assert validate(out.text, fmt).valid, out.text


def test_page_replies_through_the_fast_path_count_stop_and_cancel(fast_tiny):
    import threading

    params = SamplingParams(max_new_tokens=24, seed=3, ignore_eos=True)  # the page's sampling defaults
    chunks = list(fast_tiny.stream_chat(ASK, params))
    stats = chunks[-1].stats
    assert stats.completion_tokens == 24 and stats.finish_reason == "length" and stats.ttft_s > 0
    assert "".join(c.text for c in chunks) == "".join(c.text for c in fast_tiny.stream_chat(ASK, params))  # seeded
    cancel = threading.Event()
    stream = fast_tiny.stream_chat(ASK, SamplingParams(max_new_tokens=2000, seed=3, ignore_eos=True), cancel)
    next(stream)
    cancel.set()
    stats = [c.stats for c in stream if c.stats][0]
    assert stats.finish_reason == "cancelled" and stats.completion_tokens < 2000


def test_float32_twin_is_the_model_itself_in_float32(tiny):
    """The bench's reference for 16-bit decoders (`float32_twin_logits`) copies every weight and buffer:
    for a float32 model it gives the model's own logits; for a bf16 model, the logits of its bf16 weights
    in float32 arithmetic, which its own bf16 logits only approximate."""
    import copy

    from lab.bench.agree import float32_twin_logits

    seq = tiny.encode(tiny.render([{"role": "user", "content": "Name three rivers of Europe."}])) + [11]
    want = plain_logits(tiny, seq[:-1])
    assert torch.allclose(float32_twin_logits(tiny.model, seq), want, atol=1e-5, rtol=1e-5)
    half = copy.deepcopy(tiny.model).to(torch.bfloat16)
    with torch.no_grad():
        own = half(torch.tensor([seq[:-1]])).logits[0].float()
    twin = float32_twin_logits(half, seq)
    rounded = copy.deepcopy(tiny.model)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).float())
        exact = rounded(torch.tensor([seq[:-1]])).logits[0].float()
    assert torch.allclose(twin, exact, atol=1e-5, rtol=1e-5)
    assert (own - exact).norm() > 10 * (twin - exact).norm()


