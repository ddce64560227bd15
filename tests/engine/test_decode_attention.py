"""The split-KV decode attention kernel (lab.engine.kernels.attention) against a float64 softmax, and the static
decoder's step with it (LAB_ATTENTION=lab) against the same step with torch's SDPA.

On a CPU the kernel runs under Triton's interpreter in a separate process (this file run as a script), as in
test_nf4_kernel.py: the interpreter has to be chosen before triton is imported. The gpu-marked tests run the
compiled kernel at Qwen2.5-7B's head shape (4 kv heads of 7 query heads, d 128, bf16) against SDPA, inside a
CUDA graph replayed at a new `cur`, and through the compiled, captured decode step."""

import os
import sys

if __name__ == "__main__":  # the interpreter's process (see the docstring): before anything imports triton
    os.environ["TRITON_INTERPRET"] = "1"

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def reference(q, k, v, cur: int, pad, scale: float) -> torch.Tensor:
    """Row b's queries over slots pad[b]..cur, in float64, with plain torch."""
    slots = torch.arange(k.shape[2], device=k.device)
    allowed = (slots[None, :] <= cur) & (slots[None, :] >= pad[:, None])  # [b, slots]
    scores = torch.einsum("bhgd,bhsd->bhgs", q.double(), k.double()) * scale
    scores = scores.masked_fill(~allowed[:, None, None, :], float("-inf"))
    return torch.einsum("bhgs,bhsd->bhgd", scores.softmax(-1), v.double())


def tiny_qwen2(seed: int = 0):
    """A random Qwen2 with heads the kernel takes (d 32, 7 query heads per key head, as the 7B), float32."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=300, hidden_size=448, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=256)
    return Qwen2ForCausalLM(cfg).eval()


def greedy(model, rows: list[list[int]], steps: int, batch: int, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [steps, rows, vocab] and tokens of greedy decoding through the static decoder."""
    from lab.engine.decoder import StaticDecoder

    dec = StaticDecoder(model, batch=batch, max_len=64, prompt_widths=(), **kw)
    logits, tokens = [], []
    with torch.inference_mode():
        for t in dec.k + dec.v:  # leftovers of an earlier reply in every slot past the prompts
            t.fill_(7.0)
        out = dec.prefill(rows)
        for _ in range(steps):
            nxt = out[:len(rows)].argmax(-1)
            dec.ids[:len(rows), 0] = nxt
            tokens.append(nxt.cpu())
            out = dec.step()
            logits.append(out[:len(rows)].float().cpu().clone())
    return torch.stack(logits), torch.stack(tokens)


@pytest.fixture(scope="module")
def interpreted():
    from tests.engine.interpreter import run_interpreted

    return run_interpreted(__file__, "LAB_ATTENTION", timeout=600)


@needs_triton
def test_matches_a_float64_softmax(interpreted):
    for c in interpreted["cases"]:
        assert c["shape"] == c["case"]["q"], c
        # float32: the same sums in another order; 16 bits: the output (and p, for p @ v) rounded as SDPA's is
        tol = 1e-5 if c["case"]["dtype"] == "float32" else 2 * c["sdpa_err"]
        assert c["err"] <= tol, c


@needs_triton
def test_slots_outside_pad_and_cur_are_never_read(interpreted):
    """NaN and 1e30 in every slot before a row's pad and past cur: the same output, finite."""
    for c in interpreted["untouched"]:
        assert c["finite"] and c["diff"] == 0.0, c


@needs_triton
def test_compiled_as_an_opaque_operator(interpreted):
    assert interpreted["compiled"] == 0.0


@needs_triton
def test_supports_names_what_it_cannot_take(interpreted):
    r = interpreted["reasons"]
    assert r["ok"] is None
    assert "power-of-two head dim" in r["d24"] and "power-of-two head dim" in r["d8"]
    assert "dtype" in r["mixed"] and "query heads" in r["group"]


@needs_triton
def test_decoder_step_with_lab_attention_matches_sdpa(interpreted):
    """tiny_qwen2 in float32: greedy logits over 10 steps (past chunk boundaries), one row and two left-padded
    rows of different lengths; with LAB_ATTENTION=lab every layer's step went through the kernel."""
    for case in interpreted["decoder"]:
        assert case["calls"] == case["want_calls"], case
        assert case["diff"] <= 1e-4 and case["same_tokens"], case


def test_an_unknown_lab_attention_is_one_clear_error(monkeypatch):
    from lab.engine.kernels import attention

    monkeypatch.setenv("LAB_ATTENTION", "flash")
    with pytest.raises(ValueError, match="LAB_ATTENTION must be 'lab' or 'sdpa', not 'flash'"):
        attention.selected()
    monkeypatch.setenv("LAB_ATTENTION", " LAB ")
    assert attention.selected() == "lab"
    monkeypatch.delenv("LAB_ATTENTION")
    assert attention.selected() == attention.DEFAULT


# ---- on the GPU: python -m pytest -m gpu tests/engine/test_decode_attention.py ----------------------------
def _cache_len(context: int) -> int:
    """The engine's cache size for a context: max(1024, the next power of two of context + 256)."""
    return max(1024, 1 << (context + 256 - 1).bit_length())


def _sdpa(q, k, v, cur: int, pad, scale: float) -> torch.Tensor:
    slots = torch.arange(k.shape[2], device=k.device)
    mask = ((slots <= cur) & (slots >= pad[:, None]))[:, None, None, :]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _gpu_inputs(rows: int, context: int, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    max_len = _cache_len(context)
    q = torch.randn(rows, 4, 7, 128, device="cuda", generator=g).to(torch.bfloat16)
    k = torch.randn(rows, 4, max_len, 128, device="cuda", generator=g).to(torch.bfloat16)
    v = torch.randn(rows, 4, max_len, 128, device="cuda", generator=g).to(torch.bfloat16)
    pad = torch.tensor([(37 * i) % max(1, context // 2) for i in range(rows)], device="cuda")
    return q, k, v, pad


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("rows", [1, 8])
def test_7b_heads_against_sdpa_on_gpu(rows):
    from lab.engine.kernels import attention

    scale = 128 ** -0.5
    for i, context in enumerate((17, 800, 4095, 16384, 32000)):
        q, k, v, pad = _gpu_inputs(rows, context, seed=i)
        cur = torch.tensor([context], device="cuda")
        assert attention.supports(q, k) is None
        with torch.inference_mode():
            ours = attention.decode_attention(q, k, v, cur, pad, scale)
            theirs = _sdpa(q, k, v, context, pad, scale)
        want = reference(q, k, v, context, pad, scale)
        assert ours.shape == q.shape and ours.dtype == torch.bfloat16
        err, base = (ours.double() - want).abs().max().item(), (theirs.double() - want).abs().max().item()
        assert err <= max(2 * base, 2e-3), (rows, context, err, base)  # bf16 output rounding, as SDPA's
        again = attention.decode_attention(q, k, v, cur, pad, scale)
        assert torch.equal(ours, again), "the combine must be deterministic"
        del q, k, v
        torch.cuda.empty_cache()


@pytest.mark.gpu
@needs_cuda
def test_one_cuda_graph_serves_every_cur():
    """Captured at one cur, replayed after writing other values into cur: the answer for the new cur (every cur at
    or past each row's pad, as in the engine: a row's pad is never past the slot being written)."""
    from lab.engine.kernels import attention

    q, k, v, pad = _gpu_inputs(8, 5000, seed=3)
    scale = 128 ** -0.5
    first = pad.max().item()
    cur = torch.tensor([first], device="cuda")
    with torch.inference_mode():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            attention.decode_attention(q, k, v, cur, pad, scale)  # compiled outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = attention.decode_attention(q, k, v, cur, pad, scale)
        for c in (2047, 2048, 4999, 8191, first, first + 1):
            cur.fill_(c)
            graph.replay()
            torch.cuda.synchronize()
            want = reference(q, k, v, c, pad, scale)
            assert (out.double() - want).abs().max().item() <= 1e-2, c
            assert torch.equal(out, attention.decode_attention(q, k, v, cur, pad, scale)), c


@pytest.mark.gpu
@needs_cuda
def test_compiled_captured_step_with_lab_attention_on_gpu(monkeypatch):
    """The engine's own path on the GPU (torch.compile, one CUDA graph) in bfloat16: LAB_ATTENTION=lab gives
    SDPA's greedy tokens and logits within bfloat16 noise."""
    model = tiny_qwen2().to("cuda", torch.bfloat16)
    rows = [list(range(3, 9)), list(range(10, 31))]
    got = {}
    for value in ("sdpa", "lab"):
        monkeypatch.setenv("LAB_ATTENTION", value)
        got[value] = greedy(model, rows, 12, batch=2, graphs=True, compile=True)
    assert (got["lab"][0] - got["sdpa"][0]).abs().max() <= 5e-2
    assert torch.equal(got["lab"][1], got["sdpa"][1])


# ---- the interpreter's process: python tests/engine/test_decode_attention.py prints its results as JSON ------
def _cases() -> list[dict]:
    out = []
    # (rows, kv heads, group, d, slots, chunk, cur, pads, dtype); chunk None: chunk_of's choice (16 here)
    cases = [(1, 2, 7, 32, 64, None, 40, [0], "float32"),
             (3, 2, 7, 32, 256, 32, 127, [0, 5, 100], "float32"),  # cur at a chunk's last slot
             (3, 2, 7, 32, 256, 32, 128, [0, 31, 32], "float32"),  # the first slot of a chunk; pad at boundaries
             (3, 2, 1, 32, 256, 128, 200, [0, 64, 150], "float32"),  # 2 steps of 64 a chunk; one query head
             (3, 2, 7, 32, 256, None, 255, [3, 77, 254], "float32"),  # the cache's last slot
             (1, 2, 7, 32, 128, None, 90, [90], "float32"),  # cur == pad: one slot
             (3, 2, 7, 16, 96, 64, 70, [70, 0, 65], "float32"),  # slots not a multiple of the chunk; d 16
             (1, 2, 7, 64, 64, 16, 33, [0], "float16"),
             (3, 2, 7, 32, 128, 32, 100, [0, 9, 60], "bfloat16")]
    for i, (b, n_kv, g, d, slots, chunk, cur, pads, dtype) in enumerate(cases):
        torch.manual_seed(i)
        dt = getattr(torch, dtype)
        q, k, v = (torch.randn(b, n_kv, n, d).to(dt) for n in (g, slots, slots))
        pad, scale = torch.tensor(pads), d ** -0.5
        o = attention.decode_attention(q, k, v, torch.tensor([cur]), pad, scale, chunk)
        want = reference(q, k, v, cur, pad, scale)
        err = (o.double() - want).abs().max().item()
        slots_ = torch.arange(slots)
        mask = ((slots_ <= cur) & (slots_ >= pad[:, None]))[:, None, None, :]
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        case = {"q": [b, n_kv, g, d], "slots": slots, "chunk": chunk, "cur": cur, "pads": pads, "dtype": dtype}
        out.append({"sdpa_err": (sdpa.double() - want).abs().max().item(), "case": case, "shape": list(o.shape),
                    "err": err, "dtype": str(o.dtype)})
    return out


def _untouched() -> list[dict]:
    out = []
    for chunk, cur, pads in ((None, 50, [0, 7, 33]), (32, 96, [31, 64, 96]), (128, 129, [0, 100, 128])):
        torch.manual_seed(cur)
        q, k, v = torch.randn(3, 2, 7, 32), torch.randn(3, 2, 160, 32), torch.randn(3, 2, 160, 32)
        pad, now = torch.tensor(pads), torch.tensor([cur])
        clean = attention.decode_attention(q, k, v, now, pad, 0.2, chunk)
        for fill in (float("nan"), 1e30):
            k2, v2 = k.clone(), v.clone()
            for r, p in enumerate(pads):
                for t in (k2, v2):
                    t[r, :, :p] = fill
                    t[r, :, cur + 1:] = fill
            dirty = attention.decode_attention(q, k2, v2, now, pad, 0.2, chunk)
            out.append({"chunk": chunk, "cur": cur, "fill": str(fill), "finite": bool(dirty.isfinite().all()),
                        "diff": (dirty - clean).abs().max().item()})
    return out


def _compiled() -> float:
    q, k, v = torch.randn(2, 2, 7, 32), torch.randn(2, 2, 64, 32), torch.randn(2, 2, 64, 32)
    cur, pad = torch.tensor([40]), torch.tensor([0, 12])
    fn = torch.compile(lambda *a: attention.decode_attention(*a, 0.3) * 2, backend="aot_eager", fullgraph=True)
    return (fn(q, k, v, cur, pad) - 2 * attention.decode_attention(q, k, v, cur, pad, 0.3)).abs().max().item()


def _reasons() -> dict:
    q, k = torch.randn(1, 2, 7, 32), torch.randn(1, 2, 64, 32)
    return {"ok": attention.supports(q, k),
            "d24": attention.supports(torch.randn(1, 2, 7, 24), torch.randn(1, 2, 64, 24)),
            "d8": attention.supports(torch.randn(1, 2, 7, 8), torch.randn(1, 2, 64, 8)),
            "mixed": attention.supports(q, k.half()),
            "group": attention.supports(torch.randn(1, 2, 65, 32), k)}


def _decoder() -> list[dict]:
    model = tiny_qwen2()
    out = []
    kernel, calls = attention.decode_attention, []
    attention.decode_attention = lambda *a, **kw: calls.append(1) or kernel(*a, **kw)
    for rows, batch in (([list(range(5, 16))], 1), ([list(range(20, 25)), list(range(40, 57))], 2)):
        got = {}
        for value in ("sdpa", "lab"):
            os.environ["LAB_ATTENTION"] = value
            calls.clear()
            got[value] = greedy(model, rows, 10, batch=batch, graphs=False, compile=False)
        out.append({"rows": [len(r) for r in rows], "calls": len(calls), "want_calls": 10 * len(model.model.layers),
                    "diff": (got["lab"][0] - got["sdpa"][0]).abs().max().item(),
                    "same_tokens": torch.equal(got["lab"][1], got["sdpa"][1])})
    attention.decode_attention = kernel
    os.environ.pop("LAB_ATTENTION")
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from lab.engine.kernels import attention

    print(json.dumps({"cases": _cases(), "untouched": _untouched(), "compiled": _compiled(), "reasons": _reasons(),
                      "decoder": _decoder()}))
