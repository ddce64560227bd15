"""Decode attention split over the key/value slots (flash-decoding), for the static decoder's step.

`decode_attention(q, k, v, cur, pad, scale)` computes what the step's SDPA call with its boolean mask computes:
q [b, n_kv, group, d] (the `group` query heads of key head h as rows of that head), k and v the caches
[b, n_kv, max_len, d]; row b attends to slots pad[b] <= s <= cur (cur: int64 [1], the slot just written; pad:
int64 [b], on the device). Softmax in float32, output [b, n_kv, group, d] in q's dtype.

The slots are cut into chunks of `chunk_of(...)` slots; program (b * n_kv + h, c) reads chunk c of head h in
steps of BLOCK_N slots up to cur only (the loop bound is read from `cur` on the device: only shapes decide the
grid, so one CUDA graph serves every cur) and writes a partial: its running max m and sum l (base 2, per query
row) and its unnormalised output. A chunk wholly past cur or before pad[b] reads nothing and leaves the
neutral partial (m = -inf, l = 0; its output is never read). A second kernel, one program per (b, h, query
row), combines the chunks: out = sum_c 2^(m_c - M) acc_c / sum_c 2^(m_c - M) l_c, M = max_c m_c.

    LAB_ATTENTION=lab   use this kernel in the engine's decode step (default: sdpa, torch's own)
    TRITON_INTERPRET=1  runs it on a CPU through Triton's interpreter (what the tests do)
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only torch without triton: `supports` says so
    triton = tl = None

DEFAULT = "sdpa"  # flip to "lab" once the H200 numbers (python -m lab.bench kernels) say so
MIN_CHUNK = 16  # tl.dot needs every dimension >= 16
BLOCK_N = 64  # slots a loop step (at most; a smaller chunk is read in one step)
PROGRAMS = 512  # about 4 per H200 SM (132)
MAX_GROUP = 64


def selected() -> str:
    """Which attention the decode step runs: "lab" (this module) or "sdpa" (torch's scaled_dot_product_attention)."""
    value = os.environ.get("LAB_ATTENTION", DEFAULT).strip().lower() or DEFAULT
    if value not in ("lab", "sdpa"):
        raise ValueError(f"LAB_ATTENTION must be 'lab' or 'sdpa', not {value!r}.")
    return value


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def supports(q: torch.Tensor, k: torch.Tensor) -> str | None:
    """None when `decode_attention(q, k, v, ...)` can run on these shapes; else the reason it cannot."""
    if triton is None:
        return "Triton is not installed"
    if q.device.type == "cuda":
        if interpreted():
            return "TRITON_INTERPRET=1 runs on the CPU only"
    elif not (q.device.type == "cpu" and interpreted()):
        return f"needs CUDA (or TRITON_INTERPRET=1 on a CPU), not {q.device.type}"
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        return "takes q [b, n_kv, group, d] and caches [b, n_kv, max_len, d]"
    d = q.shape[3]
    if d < 16 or d > 256 or d & (d - 1):
        return f"needs a power-of-two head dim from 16 to 256 (tl.dot's smallest tile is 16), not {d}"
    if q.shape[2] > MAX_GROUP:
        return f"takes up to {MAX_GROUP} query heads per key head, not {q.shape[2]}"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype:
        return f"needs q and the caches in one 16/32-bit float dtype, not {q.dtype} and {k.dtype}"
    if q.stride(3) != 1 or k.stride(3) != 1:
        return "needs the head dim contiguous"
    if k.device != q.device:
        return "q and the caches are on different devices"
    return None


def chunk_of(rows: int, n_kv: int, max_len: int) -> int:
    """Slots per program: about PROGRAMS programs over the whole cache, chunks of 16 slots at least.
    One row of the 7B (4 kv heads): 1024 slots -> 64 chunks of 16 (at cur 800, ~200 busy programs), 32768 ->
    128 chunks of 256 (the partials, 128 x group x d floats a head, stay ~2% of the keys and values read)."""
    chunks = max(1, PROGRAMS // (rows * n_kv))
    return max(MIN_CHUNK, triton.next_power_of_2(triton.cdiv(max_len, chunks)))  # past BLOCK_N: whole steps


# ---- the kernels ------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def decode_attention_chunk(q_ptr, k_ptr, v_ptr, cur_ptr, pad_ptr, m_ptr, l_ptr, acc_ptr, n_kv, n_chunks, chunk,
                               qk_scale, sqb, sqh, sqg, skb, skh, sks, svb, svh, svs,
                               G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BN: tl.constexpr,
                               PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        # The query rows are padded to GP >= 16 and multiplied with tl.dot: a broadcast-multiply-sum over
        # [rows, BN, D] holds 64 x 128 floats a row in registers on CUDA (spills), while the padded rows of a
        # dot cost nothing here (the loop waits on memory, not on the tensor cores). The interpreter runs
        # tl.dot too (numpy), with the same shape rules, but multiplies bfloat16 operands wrongly (their raw
        # bits, Triton 3.x): UPCAST there gives it float32 tiles holding the same bfloat16 values.
        bh, c = tl.program_id(0), tl.program_id(1)
        b, h = (bh // n_kv).to(tl.int64), (bh % n_kv).to(tl.int64)  # a long cache of a big batch passes 2^31
        cur = tl.load(cur_ptr)
        pad = tl.load(pad_ptr + b)
        start = c * chunk
        lo = tl.maximum(start, pad)
        hi = tl.minimum(start + chunk, cur + 1)
        first = (lo // BN) * BN  # steps aligned to BN; slots before lo are masked, never loaded
        hi = tl.where(lo < hi, hi, first)  # an empty chunk (past cur, or before pad) takes no step
        r = tl.arange(0, GP)
        j = tl.arange(0, D)
        n = tl.arange(0, BN)
        q = tl.load(q_ptr + b * sqb + h * sqh + r[:, None] * sqg + j[None, :], mask=r[:, None] < G, other=0.0)
        k_base = k_ptr + b * skb + h * skh
        v_base = v_ptr + b * svb + h * svh
        if UPCAST:
            q = q.to(tl.float32)
        m_i = tl.full([GP], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([GP], dtype=tl.float32)
        acc = tl.zeros([GP, D], dtype=tl.float32)
        for s0 in range(first, hi, BN):  # every step holds at least one allowed slot: m stays finite
            s = s0 + n
            ok = (s >= lo) & (s < hi)
            kt = tl.load(k_base + s[:, None] * sks + j[None, :], mask=ok[:, None], other=0.0)
            vt = tl.load(v_base + s[:, None] * svs + j[None, :], mask=ok[:, None], other=0.0)
            p_type = vt.dtype
            if UPCAST:
                kt, vt = kt.to(tl.float32), vt.to(tl.float32)
            scores = tl.dot(q, tl.trans(kt), input_precision=PRECISION) * qk_scale  # base 2: scale * log2(e)
            scores = tl.where(ok[None, :], scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(scores - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(p_type).to(vt.dtype), vt, input_precision=PRECISION)
            m_i = m_new
        part = bh * n_chunks + c
        tl.store(m_ptr + part * G + r, m_i, mask=r < G)
        tl.store(l_ptr + part * G + r, l_i, mask=r < G)
        if lo < hi:
            tl.store(acc_ptr + (part * G + r[:, None]) * D + j[None, :], acc, mask=r[:, None] < G)

    @triton.jit
    def decode_attention_combine(m_ptr, l_ptr, acc_ptr, out_ptr, n_chunks, G: tl.constexpr, D: tl.constexpr,
                                 CP: tl.constexpr, CB: tl.constexpr):
        pid = tl.program_id(0)  # (b * n_kv + h) * G + query row
        bh, g = pid // G, pid % G
        c = tl.arange(0, CP)
        m = tl.load(m_ptr + (bh * n_chunks + c) * G + g, mask=c < n_chunks, other=float("-inf"))
        top = tl.max(m, axis=0)
        l_all = tl.load(l_ptr + (bh * n_chunks + c) * G + g, mask=c < n_chunks, other=0.0)
        total = tl.sum(tl.exp2(m - top) * l_all, axis=0)
        j = tl.arange(0, D)
        cb = tl.arange(0, CB)
        out = tl.zeros([D], dtype=tl.float32)
        for c0 in range(0, n_chunks, CB):  # a fixed order: the same input gives the same output
            cc = c0 + cb
            mc = tl.load(m_ptr + (bh * n_chunks + cc) * G + g, mask=cc < n_chunks, other=float("-inf"))
            busy = mc > float("-inf")  # neutral chunks wrote no output
            a = tl.load(acc_ptr + ((bh * n_chunks + cc[:, None]) * G + g) * D + j[None, :], mask=busy[:, None],
                        other=0.0)
            out += tl.sum(tl.where(busy, tl.exp2(mc - top), 0.0)[:, None] * a, axis=0)
        tl.store(out_ptr + pid * D + j, (out / total).to(out_ptr.dtype.element_ty))


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cur: torch.Tensor, pad: torch.Tensor, scale: float,
            chunk: int) -> torch.Tensor:
    b, n_kv, group, d = q.shape
    max_len = k.shape[2]
    chunk = chunk or chunk_of(b, n_kv, max_len)
    assert chunk >= MIN_CHUNK and (chunk <= BLOCK_N and chunk & (chunk - 1) == 0 or chunk % BLOCK_N == 0), chunk
    n_chunks = triton.cdiv(max_len, chunk)
    m = torch.empty((b * n_kv, n_chunks, group), dtype=torch.float32, device=q.device)
    l_ = torch.empty_like(m)
    acc = torch.empty((b * n_kv, n_chunks, group, d), dtype=torch.float32, device=q.device)
    out = torch.empty((b, n_kv, group, d), dtype=q.dtype, device=q.device)
    decode_attention_chunk[(b * n_kv, n_chunks)](
        q, k, v, cur, pad, m, l_, acc, n_kv, n_chunks, chunk, scale * math.log2(math.e),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1),
        v.stride(2), G=group, GP=max(16, triton.next_power_of_2(group)), D=d, BN=min(chunk, BLOCK_N),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST=interpreted() and q.dtype == torch.bfloat16, num_warps=4)
    cp = triton.next_power_of_2(n_chunks)
    decode_attention_combine[(b * n_kv * group,)](m, l_, acc, out, n_chunks, G=group, D=d, CP=cp, CB=min(cp, 16),
                                                  num_warps=4)
    return out


@torch.library.custom_op("lab::decode_attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cur: torch.Tensor, pad: torch.Tensor,
                  scale: float, chunk: int) -> torch.Tensor:
    # an opaque operator to torch.compile: the decode step is compiled, the kernels are launched as they are
    return _launch(q, k, v, cur, pad, scale, chunk)


@_attention_op.register_fake
def _(q, k, v, cur, pad, scale, chunk):
    return q.new_empty(q.shape)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cur: torch.Tensor, pad: torch.Tensor,
                     scale: float, chunk: int | None = None) -> torch.Tensor:
    """softmax(q k^T * scale over slots pad[b]..cur) v, [b, n_kv, group, d] in q's dtype (check `supports`
    first). `chunk` (tests, benchmarks): slots per program, a power of two up to BLOCK_N or a multiple of it."""
    return _attention_op(q, k, v, cur, pad, float(scale), int(chunk or 0))
