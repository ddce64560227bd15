"""The static decoder gives the plain path's logits (tiny-random, float32, on the CPU): teacher-forced next-token
logits equal a plain forward pass over the same tokens, for one row, for left-padded rows of different lengths
and through the captured prompt step; greedy decoding gives `generate()`'s tokens; Qwen3's per-head norms are
kept. The GPU versions of these checks (7B shape, bf16/NF4) are in `lab/bench/agree.py`.
"""

from __future__ import annotations

import pytest
import torch

from lab.engine.decoder import StaticDecoder
from lab.engine.fastpath import FastPath
from lab.engine.layers import supported
from lab.engine.loop import decode
from lab.engine.sampling import GraphSampler, HostSampler, generate_kwargs, sampler_for
from lab.interface import SamplingParams


def plain_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.model(torch.tensor([ids])).logits[0].float()


def teacher_forced(dec: StaticDecoder, rows: list[list[int]], forced: list[list[int]]) -> list[torch.Tensor]:
    """Logits `dec` gives after each prompt and after each forced token, per row."""
    out = [[] for _ in rows]
    with torch.inference_mode():
        dec.k[0].fill_(7.0)  # slots past the prompt hold leftovers of an earlier reply
        logits = dec.prefill(rows)
        for step in range(len(forced[0])):
            for i in range(len(rows)):
                out[i].append(logits[i].clone())
            dec.ids[:len(rows), 0] = torch.tensor([f[step] for f in forced])
            logits = dec.step()
    return [torch.stack(o) for o in out]


@pytest.mark.parametrize("widths", [(), "exact", "padded"], ids=["model-forward", "prompt-step", "prompt-step-padded"])
def test_static_decoder_matches_a_plain_forward_pass(tiny, widths):
    """The prompt through the model's own forward, or through `_prompt_step` at its own width or
    right-padded to a wider one (the captured prefill's path on CUDA)."""
    prompt = tiny.encode(tiny.render([{"role": "user", "content": "Tell me about the sea."}]))
    forced = tiny.encode(" The sea is wide, blue and deep; 海很深。" * 2)[:24]
    widths = {"exact": (len(prompt),), "padded": (len(prompt) // 2, len(prompt) + 37, 250)}.get(widths, widths)
    dec = StaticDecoder(tiny.model, batch=1, max_len=256, graphs=False, prompt_widths=widths)
    got = teacher_forced(dec, [prompt], [forced])[0]
    want = plain_logits(tiny, prompt + forced)[len(prompt) - 1:len(prompt) - 1 + len(forced)]
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_static_decoder_left_pads_rows_of_different_lengths(tiny):
    a = tiny.encode("A short prompt")
    b = tiny.encode("A much longer prompt that pads the other row on the left, by several tokens")
    forced = [tiny.encode(" one two three four five six seven")[:5], tiny.encode(" eight nine ten eleven twelve")[:5]]
    got = teacher_forced(StaticDecoder(tiny.model, batch=2, max_len=256, graphs=False), [a, b], forced)
    for prompt, f, g in zip((a, b), forced, got):
        want = plain_logits(tiny, prompt + f)[len(prompt) - 1:len(prompt) - 1 + len(f)]
        assert torch.allclose(g, want, atol=1e-4, rtol=1e-4), (g - want).abs().max()
        assert (g.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.parametrize("in_graph", [True, False], ids=["graph-sampler", "eager-sampler"])
def test_greedy_decode_gives_generate_tokens(tiny, in_graph):
    rows = [tiny.encode(tiny.render([{"role": "user", "content": q}])) for q in ("Hi", "What is 2+2? Explain.")]
    params = SamplingParams(temperature=0, repetition_penalty=1.3, max_new_tokens=20)
    dec = StaticDecoder(tiny.model, batch=3, max_len=256, eos_ids=tiny.eos_ids, pad_id=tiny.pad_id, graphs=False)
    assert isinstance(sampler_for(params, tiny.eos_ids), GraphSampler)
    sampler = GraphSampler(params) if in_graph else HostSampler(params, tiny.eos_ids)
    seen = []
    got = decode(dec, rows, sampler, 20, tiny.eos_ids, tiny.pad_id, on_tokens=lambda t: seen.append(t))
    for row, new in zip(rows, got.tokens):
        ids = torch.tensor([row])
        with torch.no_grad():
            ref = tiny.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      **generate_kwargs([params], [0], len(row), tiny.eos_ids, tiny.pad_id)
                                      )[0, len(row):].tolist()
        ref = ref[:next((i + 1 for i, t in enumerate(ref) if t in tiny.eos_ids), len(ref))]
        assert new == ref
    assert len(seen) == max(len(t) for t in got.tokens)  # every step reached the host, in order


def test_one_row_through_the_prompt_step_decodes_generate_tokens(tiny):
    """A chat turn on CUDA: the prompt right-padded through `_prompt_step`, then the decode steps; run
    twice on one decoder, so the second reply starts over the first one's keys and values."""
    params = SamplingParams(temperature=0, max_new_tokens=16)
    dec = StaticDecoder(tiny.model, batch=1, max_len=256, eos_ids=tiny.eos_ids, pad_id=tiny.pad_id,
                             graphs=False, prompt_widths=(64, 128))
    for q in ("Write a long, long poem about the sea and the wind, please.", "Hi"):
        row = tiny.encode(tiny.render([{"role": "user", "content": q}]))
        assert len(row) < 128
        got = decode(dec, [row], sampler_for(params, tiny.eos_ids), 16, tiny.eos_ids, tiny.pad_id)
        ids = torch.tensor([row])
        with torch.no_grad():
            ref = tiny.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      **generate_kwargs([params], [0], len(row), tiny.eos_ids, tiny.pad_id)
                                      )[0, len(row):].tolist()
        assert got.tokens[0] == ref[:len(got.tokens[0])] and len(got.tokens[0]) == len(ref)


def test_clearing_the_fast_path_lets_the_decoders_go(tiny):
    import gc
    import weakref

    path = FastPath(tiny.model, tiny.eos_ids, tiny.pad_id, keep=1)
    first = weakref.ref(path.decoder(1, 64))
    second = weakref.ref(path.decoder(2, 64))  # the oldest shape is evicted: keep=1
    gc.collect()
    assert first() is None and second() is not None
    path.clear()
    gc.collect()
    assert second() is None


@pytest.mark.parametrize("widths", [(), (32,)], ids=["model-forward", "prompt-step"])
def test_static_decoder_keeps_qwen3_per_head_norms(widths):
    """Qwen3 normalises each query and key head before rotary (`q_norm`, `k_norm`); the decode and prompt
    steps must too. A small random Qwen3, float32, teacher-forced against its own forward pass."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # norms away from 1, so leaving them out would show
            layer.self_attn.q_norm.weight.uniform_(0.2, 3.0)
            layer.self_attn.k_norm.weight.uniform_(0.2, 3.0)
    assert supported(model) is None
    ids = torch.randint(0, 300, (30,)).tolist()
    prompt, forced = ids[:20], ids[20:]
    got = teacher_forced(StaticDecoder(model, batch=1, max_len=64, graphs=False, prompt_widths=widths),
                         [prompt], [forced])[0]
    with torch.no_grad():
        want = model(torch.tensor([ids[:-1]])).logits[0, len(prompt) - 1:].float()
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
