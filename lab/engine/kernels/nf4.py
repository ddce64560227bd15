"""NF4 matrix-vector products (up to 8 rows) straight from bitsandbytes' packed 4-bit weights.

`nf4_matmul(x, module)` computes what a loaded `bnb.nn.Linear4bit` computes, x @ W.T + b, from the module's
own storage: `module.weight` (uint8, two codes per byte) and `module.weight.quant_state` (one absmax per 64
codes, the 16-value NF4 table, and with double quant the absmax as uint8 codes into `state2`'s table, with
`state2`'s own absmax per 256 blocks and `offset`). Nothing is re-quantized or copied.

bitsandbytes' layout (its pure-torch backend, `backends/default/ops.py`, is the reference): the weight
[N, K] is flattened row-major; byte i holds element 2i in its HIGH nibble and 2i+1 in its LOW nibble; block b
of 64 consecutive elements has absmax[b], so with K % 64 == 0 row n's blocks are n*K/64 .. (n+1)*K/64 - 1.
Nested: absmax[b] = state2.code[absmax_u8[b]] * state2.absmax[b // 256] + offset.

The kernel reads the bytes as int32 words (8 codes each; little-endian, so the code at bit shift 4*i is
column i ^ 1 of the word), looks the codes up in the 16-entry table (64 bytes, resident in L1), multiplies by
x in fp32 and sums each 64-code block before applying its absmax once. Tall products split K over programs
and a second small kernel adds the parts (in a fixed order: the same input gives the same output).

    LAB_KERNELS=lab   use this kernel in the engine's decode step (default: bnb, bitsandbytes' own forward)
    TRITON_INTERPRET=1 runs it on a CPU through Triton's interpreter (what the tests do)
"""

from __future__ import annotations

import functools
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only torch without triton: `supports` says so
    triton = tl = None

MAX_ROWS = 8
BLOCK = 64  # codes per absmax: the only blocksize this kernel reads


def kernels() -> str:
    """Which NF4 kernels the engine runs: "lab" (this module) or "bnb" (bitsandbytes' forward)."""
    value = os.environ.get("LAB_KERNELS", "bnb").strip().lower() or "bnb"
    if value not in ("lab", "bnb"):
        raise ValueError(f"LAB_KERNELS must be 'lab' or 'bnb', not {value!r}.")
    return value


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def supports(module, x: torch.Tensor) -> str | None:
    """None when `nf4_matmul(x, module)` can run; else the reason it cannot."""
    if triton is None:
        return "Triton is not installed"
    qs = getattr(getattr(module, "weight", None), "quant_state", None)
    if type(module).__name__ != "Linear4bit" or qs is None:
        return "not a quantized bitsandbytes Linear4bit"
    if x.device.type == "cuda":
        if interpreted():
            return "TRITON_INTERPRET=1 runs on the CPU only"
    elif not (x.device.type == "cpu" and interpreted()):
        return f"needs CUDA (or TRITON_INTERPRET=1 on a CPU), not {x.device.type}"
    if qs.quant_type != "nf4" or qs.blocksize != BLOCK:
        return f"reads NF4 with blocksize {BLOCK}, not {qs.quant_type} with blocksize {qs.blocksize}"
    if getattr(qs, "packing_format_for_cpu", False):
        return "bitsandbytes repacked this weight for its CPU kernel"
    w = module.weight.data
    n, k = tuple(qs.shape) if len(qs.shape) == 2 else (0, 0)
    if k % BLOCK or w.dtype != torch.uint8 or w.numel() * 2 != n * k or not w.is_contiguous() or _offset(w) % 4:
        return "the packed weight is not a whole uint8 [N*K/2] with K a multiple of 64"
    if x.shape[-1] != k or x.numel() // k > MAX_ROWS or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"takes up to {MAX_ROWS} rows of {k} 16/32-bit floats"
    if qs.nested and not isinstance(qs.offset, torch.Tensor):
        return "double quant's offset is not a tensor"
    if w.device != x.device:
        return "the weight and the input are on different devices"
    return None


def _offset(w: torch.Tensor) -> int:
    # torch.compile cannot trace storage_offset(); bitsandbytes allocates each packed weight whole
    return 0 if torch.compiler.is_compiling() else w.storage_offset()


# ---- the kernels ---------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _scales(absmax_ptr, absq_ptr, abs2_ptr, code2_ptr, offset_ptr, idx, mask, BLOCK2: tl.constexpr,
                NESTED: tl.constexpr):
        """The absmax of blocks `idx`, dequantized from its uint8 code once per block with double quant."""
        if NESTED:
            q = tl.load(absq_ptr + idx, mask=mask, other=0).to(tl.int32)
            a = tl.load(code2_ptr + q) * tl.load(abs2_ptr + idx // BLOCK2, mask=mask, other=0.0)
            return a + tl.load(offset_ptr)
        return tl.load(absmax_ptr + idx, mask=mask, other=0.0)

    @triton.jit
    def _nf4_gemv(x_ptr, w_ptr, absmax_ptr, absq_ptr, abs2_ptr, code2_ptr, offset_ptr, code_ptr, bias_ptr,
                  out_ptr, part_ptr, R, N, KB, stride_x, blocks_per_split,
                  NESTED: tl.constexpr, BLOCK2: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
                  RP: tl.constexpr, BN: tl.constexpr, NB: tl.constexpr):
        # Tile: BN weight rows x NB blocks of 64 codes (8 int32 words each) per step, RP input rows.
        pid_n, pid_s = tl.program_id(0), tl.program_id(1)
        n = pid_n * BN + tl.arange(0, BN)
        r = tl.arange(0, RP)
        kb0 = tl.arange(0, NB)
        j = tl.arange(0, 8)
        n3 = n[:, None, None]
        j3 = j[None, None, :]
        r4 = r[:, None, None, None]
        j4 = j[None, None, None, :]
        start = pid_s * blocks_per_split
        stop = tl.minimum(start + blocks_per_split, KB)
        acc = tl.zeros([RP, BN, NB, 8], dtype=tl.float32)  # summed over words and blocks once, at the end
        for b in range(start, stop, NB):
            kb = b + kb0
            kmask = kb < stop
            wmask = (n3 < N) & kmask[None, :, None]
            woffs = tl.max_contiguous(n3 * (KB * 8) + kb[None, :, None] * 8 + j3, [1, 1, 1])
            words = tl.load(w_ptr + woffs, mask=wmask, other=0,
                            eviction_policy="evict_first").to(tl.uint32, bitcast=True)  # shifts fill with zeros
            smask = (n[:, None] < N) & kmask[None, :]
            scale = _scales(absmax_ptr, absq_ptr, abs2_ptr, code2_ptr, offset_ptr, n[:, None] * KB + kb[None, :],
                            smask, BLOCK2, NESTED)
            xmask = (r4 < R) & kmask[None, None, :, None]
            col = kb[None, None, :, None] * 64 + j4 * 8  # first column of each word
            part = tl.zeros([RP, BN, NB, 8], dtype=tl.float32)
            for i in tl.static_range(8):
                # the code at bit shift 4*i is the word's column i ^ 1 (high nibble first within a byte)
                v = tl.load(code_ptr + ((words >> (4 * i)) & 15))
                xi = tl.load(x_ptr + r4 * stride_x + col + (i ^ 1), mask=xmask, other=0.0).to(tl.float32)
                part += v[None, :, :, :] * xi
            acc += part * scale[None, :, :, None]
        y = tl.sum(tl.sum(acc, axis=3), axis=2)
        ymask = (r[:, None] < R) & (n[None, :] < N)
        if SPLIT == 1:
            if HAS_BIAS:
                y += tl.load(bias_ptr + n, mask=n < N, other=0.0).to(tl.float32)[None, :]
            tl.store(out_ptr + r[:, None] * N + n[None, :], y.to(out_ptr.dtype.element_ty), mask=ymask)
        else:
            tl.store(part_ptr + (pid_s * RP + r[:, None]) * N + n[None, :], y, mask=ymask)

    @triton.jit
    def _sum_parts(part_ptr, bias_ptr, out_ptr, R, N, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
                   RP: tl.constexpr, BN: tl.constexpr):
        n = tl.program_id(0) * BN + tl.arange(0, BN)
        r = tl.arange(0, RP)
        s = tl.arange(0, SPLIT)
        mask = (r[None, :, None] < R) & (n[None, None, :] < N)
        parts = tl.load(part_ptr + (s[:, None, None] * RP + r[None, :, None]) * N + n[None, None, :], mask=mask,
                        other=0.0)
        y = tl.sum(parts, axis=0)
        if HAS_BIAS:
            y += tl.load(bias_ptr + n, mask=n < N, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + r[:, None] * N + n[None, :], y.to(out_ptr.dtype.element_ty),
                 mask=(r[:, None] < R) & (n[None, :] < N))

    # On the GPU a few tile shapes are timed once per product shape; the interpreter takes one small tile.
    _CONFIGS = [triton.Config({"BN": bn, "NB": nb}, num_warps=w)
                for bn, nb, w in ((32, 2, 4), (32, 4, 4), (64, 4, 4), (16, 4, 4), (64, 2, 8), (16, 2, 4))]
    _nf4_gemv_tuned = triton.autotune(_CONFIGS, key=["N", "KB", "RP", "SPLIT", "NESTED"])(_nf4_gemv)


# ---- the wrapper -----------------------------------------------------------------------------------------
@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def split_of(n: int, kb: int, device: torch.device) -> int:
    """Programs along K: enough programs for every SM twice over at 32 rows a program (a power of two)."""
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 4
    split = 1
    while triton.cdiv(n, 32) * split < 2 * sms and kb // (split * 2) >= 8 and split < 16:
        split *= 2
    return split


_CHOSEN: dict[tuple, tuple[dict, int]] = {}  # product shape -> the tile and warps the timing chose


def _tuned_launch(args: tuple, flags: dict, n: int, split: int, key: tuple) -> None:
    """The autotuned kernel, except while a CUDA graph is being captured: timing cannot run then, so the
    tile chosen before (the decoder warms every step up first) or a sound default is launched as it is."""
    if torch.cuda.is_current_stream_capturing():
        meta, warps = _CHOSEN.get(key, ({"BN": 32, "NB": 4}, 4))
        _nf4_gemv[(triton.cdiv(n, meta["BN"]), split)](*args, **flags, **meta, num_warps=warps)
        return
    _nf4_gemv_tuned[lambda meta: (triton.cdiv(n, meta["BN"]), split)](*args, **flags)
    best = _nf4_gemv_tuned.best_config
    _CHOSEN[key] = (dict(best.kwargs), best.num_warps)


def _launch(x: torch.Tensor, words: torch.Tensor, absmax: torch.Tensor, absq: torch.Tensor | None,
            abs2: torch.Tensor | None, code2: torch.Tensor | None, offset: torch.Tensor | None, code: torch.Tensor,
            bias: torch.Tensor | None, n: int, k: int, block2: int) -> torch.Tensor:
    rows = x.shape[0]
    rp = triton.next_power_of_2(rows)
    kb = k // BLOCK
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    split = split_of(n, kb, x.device)
    per = triton.cdiv(kb, split)
    nested = absq is not None
    dummy = code  # pointers a constexpr branch never reads still need a tensor
    part = torch.empty((split, rp, n), dtype=torch.float32, device=x.device) if split > 1 else out
    args = (x, words, absmax if not nested else dummy, absq if nested else dummy, abs2 if nested else dummy,
            code2 if nested else dummy, offset if nested else dummy, code, bias if bias is not None else dummy,
            out, part, rows, n, kb, x.stride(0), per)
    flags = {"NESTED": nested, "BLOCK2": block2 if nested else 1, "HAS_BIAS": bias is not None, "SPLIT": split,
             "RP": rp}
    if interpreted():
        _nf4_gemv[(triton.cdiv(n, 16), split)](*args, **flags, BN=16, NB=2)
    else:
        _tuned_launch(args, flags, n, split, (n, kb, rp, split, nested, x.dtype))
    if split > 1:
        _sum_parts[(triton.cdiv(n, 64),)](part, bias if bias is not None else dummy, out, rows, n,
                                        HAS_BIAS=bias is not None, SPLIT=split, RP=rp, BN=64)
    return out


@torch.library.custom_op("lab::nf4_matmul", mutates_args=())
def _nf4_op(x: torch.Tensor, words: torch.Tensor, absmax: torch.Tensor, absq: torch.Tensor | None,
            abs2: torch.Tensor | None, code2: torch.Tensor | None, offset: torch.Tensor | None, code: torch.Tensor,
            bias: torch.Tensor | None, n: int, k: int, block2: int) -> torch.Tensor:
    # an opaque operator to torch.compile: the decode step is compiled, the kernel is launched as it is
    return _launch(x, words, absmax, absq, abs2, code2, offset, code, bias, n, k, block2)


@_nf4_op.register_fake
def _(x, words, absmax, absq, abs2, code2, offset, code, bias, n, k, block2):
    return x.new_empty((x.shape[0], n))


def nf4_matmul(x: torch.Tensor, module) -> torch.Tensor:
    """x [..., K] @ W.T + b for a bitsandbytes NF4 `Linear4bit` with at most 8 rows (check `supports` first)."""
    qs = module.weight.quant_state
    n, k = qs.shape
    words = module.weight.data.view(-1).view(torch.int32)  # the same bytes, 8 codes a word
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    bias = module.bias
    if qs.nested:
        s2 = qs.state2
        y = _nf4_op(x2, words, s2.absmax, qs.absmax, s2.absmax, s2.code, qs.offset.reshape(1), qs.code, bias,
                    n, k, s2.blocksize)
    else:
        y = _nf4_op(x2, words, qs.absmax, None, None, None, None, qs.code, bias, n, k, 1)
    return y.reshape(*x.shape[:-1], n)
