"""The Transformers backend on tiny-random: streaming, Stop, seeds, stop strings, batched
generation and choice scoring, each checked against a plain reference computation."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lab.errors import LabError
from lab.interface import ChatModel, SamplingParams

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "你好! Tell me a story."}]


def reply(model, params, messages=MESSAGES):
    chunks = list(model.stream_chat(messages, params))
    assert chunks[-1].stats is not None and all(c.stats is None for c in chunks[:-1])
    return "".join(c.text for c in chunks), chunks[-1].stats


def test_implements_the_model_interface(tiny):
    assert isinstance(tiny, ChatModel)


def test_chat_template_is_the_models_own(tiny, data_dir):
    """With the real Qwen2.5 tokenizer, the prompt is Qwen's ChatML, with its default system turn."""
    turns = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "Hi!"},
             {"role": "user", "content": "2+2?"}]
    assert tiny.render(turns) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    own = tiny.render([{"role": "system", "content": "Be brief."}, turns[0]])
    assert own.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and "Alibaba" not in own
    assert tiny.count_chat_tokens(turns) == len(tiny.encode(tiny.render(turns)))


def test_stream_reports_tokens_and_timing(tiny):
    text, stats = reply(tiny, SamplingParams(max_new_tokens=24, seed=1, ignore_eos=True))
    assert stats.prompt_tokens == tiny.count_chat_tokens(MESSAGES)
    assert stats.completion_tokens == 24 and stats.finish_reason == "length"
    assert 0 < stats.ttft_s < stats.total_s and stats.decode_tokens_per_s > 0
    assert stats.gpu_mem_in_use_gib is None  # CPU: no GPU figure rather than a made-up one
    assert text


def test_same_seed_same_reply_other_seed_other_reply(tiny):
    params = SamplingParams(temperature=1.0, max_new_tokens=30, seed=1234, ignore_eos=True)
    a, _ = reply(tiny, params)
    b, _ = reply(tiny, params)
    c, _ = reply(tiny, SamplingParams(temperature=1.0, max_new_tokens=30, seed=4321, ignore_eos=True))
    assert a == b and a != c


def test_a_drawn_seed_is_reported_and_reproduces_the_reply(tiny):
    a, stats = reply(tiny, SamplingParams(max_new_tokens=20, ignore_eos=True))
    b, _ = reply(tiny, SamplingParams(max_new_tokens=20, seed=stats.seed, ignore_eos=True))
    assert a == b


def model_is_free(model, within: float) -> bool:
    """Whether the generating thread let go of the model within `within` seconds (it holds the model's lock)."""
    if model.lock.acquire(timeout=within):
        model.lock.release()
        return True
    return False


def test_stop_ends_the_generating_thread_within_a_second(tiny):
    steps = []
    hook = tiny.model.register_forward_hook(lambda *a: steps.append(1))
    try:
        cancel = threading.Event()
        stream = tiny.stream_chat(MESSAGES, SamplingParams(max_new_tokens=3500, seed=0, ignore_eos=True), cancel)
        for _ in range(5):
            next(stream)
        cancel.set()
        t = time.perf_counter()
        rest = list(stream)
        assert time.perf_counter() - t < 1.0
        assert model_is_free(tiny, within=1.0 - (time.perf_counter() - t))
        stats = rest[-1].stats
        assert stats.finish_reason == "cancelled" and stats.completion_tokens < 3500
        done = len(steps)
        time.sleep(0.3)
        assert len(steps) == done  # no token is computed after the thread ended
        assert done <= stats.completion_tokens + 1
    finally:
        hook.remove()


def test_closing_the_stream_stops_generation(tiny):
    """A page closed mid-reply (Gradio closes the generator) must not leave the model generating."""
    stream = tiny.stream_chat(MESSAGES, SamplingParams(max_new_tokens=3500, seed=0, ignore_eos=True))
    next(stream)
    stream.close()
    assert model_is_free(tiny, within=1.0)


def test_stop_strings_cut_the_stream(tiny):
    full, _ = reply(tiny, SamplingParams(max_new_tokens=40, seed=7, ignore_eos=True))
    stop = full[12:15]
    cut, stats = reply(tiny, SamplingParams(max_new_tokens=40, seed=7, ignore_eos=True, stop=(stop,)))
    assert cut == full[: full.find(stop)]
    assert stats.finish_reason == "stop" and stats.completion_tokens < 40


def test_prompt_over_the_context_is_refused(tiny):
    long = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(LabError, match="exceeds tiny-random's context of 4,096 tokens"):
        next(tiny.stream_chat(long, SamplingParams(max_new_tokens=10)))


def test_batched_generation_equals_one_at_a_time(tiny):
    prompts = [[{"role": "user", "content": "hi"}],
               [{"role": "user", "content": "A much longer question, to force left padding in the batch: 为什么?"}],
               "raw completion prompt: def add(a, b):"]
    params = SamplingParams(temperature=0, repetition_penalty=1.5, max_new_tokens=12)  # greedy; penalty varies tokens
    batched = tiny.generate(prompts, params)
    alone = [tiny.generate([p], params)[0] for p in prompts]
    assert [c.text for c in batched] == [c.text for c in alone]
    assert [c.prompt_tokens for c in batched] == [c.prompt_tokens for c in alone]
    assert len({c.text for c in batched}) > 1
    assert all(c.finish_reason in ("stop", "length") for c in batched)


def test_batched_generation_honours_stop_strings(tiny):
    params = SamplingParams(temperature=0, repetition_penalty=1.5, max_new_tokens=20)
    full = tiny.generate(["Once upon a time"], params)[0].text
    stop = full[8:11]
    cut = tiny.generate(["Once upon a time"], SamplingParams(temperature=0, repetition_penalty=1.5,
                                                             max_new_tokens=20, stop=(stop,)))[0]
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"


def reference_logprob(model, context: str, continuation: str) -> float:
    """log P(continuation | context) from one unpadded forward pass over the whole sequence."""
    ctx, cont = model.split_context(context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model.model(ids).logits[0].float(), -1)
    return sum(logp[len(ctx) + j - 1, t].item() for j, t in enumerate(cont))


def test_letter_scores_match_a_plain_forward_pass(tiny):
    prompts = ["Question: 1 + 1 = ?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:",
               "下列哪个是质数？\nA. 4\nB. 6\nC. 7\nD. 9\n答案：",
               "Short\nAnswer:"]
    got = tiny.score_choices(prompts, [" A", " B", " C", " D"], batch_size=2)
    want = [[reference_logprob(tiny, p, c) for c in (" A", " B", " C", " D")] for p in prompts]
    assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-4)


def test_multi_token_choices_match_a_plain_forward_pass(tiny):
    prompts = ["The capital of France is", "天空是什么颜色？"]
    choices = [" Paris, of course", " Lyon", "蓝色的"]
    got = tiny.score_choices(prompts, choices, batch_size=4)
    want = [[reference_logprob(tiny, p, c) for c in choices] for p in prompts]
    assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-4)


def test_trailing_space_moves_to_the_continuation(tiny):
    assert tiny.split_context("Answer: ", "A") == tiny.split_context("Answer:", " A")
