"""NF4 products for decode rows (up to 64) straight from bitsandbytes' packed 4-bit weights.

`nf4_matmul(x, module)` computes what a loaded `bnb.nn.Linear4bit` computes, x @ W.T + b, from the module's
own storage: `module.weight` (uint8, two codes per byte) and `module.weight.quant_state` (one absmax per 64
codes, the 16-value NF4 table, and with double quant the absmax as uint8 codes into `state2`'s table, with
`state2`'s own absmax per 256 blocks and `offset`). Nothing is re-quantized or copied.

bitsandbytes' layout (its pure-torch backend, `backends/default/ops.py`, is the reference): the weight
[N, K] is flattened row-major; byte i holds element 2i in its HIGH nibble and 2i+1 in its LOW nibble; block b
of 64 consecutive elements has absmax[b], so with K % 64 == 0 row n's blocks are n*K/64 .. (n+1)*K/64 - 1.
Nested: absmax[b] = state2.code[absmax_u8[b]] * state2.absmax[b // 256] + offset.

The kernel reads the bytes as int32 words, 128 bits (4 words, 32 codes of one row) per thread and block
(little-endian: the code at bit shift 4*i is column i ^ 1 of the word). It decodes them with the table held
in registers (nf4_decode: PTX prmt, the table rounded to bfloat16: each weight within 2^-8 of itself), or on
the interpreter and as the fallback by gathering from the exact float32 table. Each decoded word is used for
every input row (float32 FMAs into one accumulator per row); x is read 16 bytes a word; each 64-code block's
absmax is applied once per word. Tall products split K over programs and a second small kernel adds the parts
(in a fixed order: the same input gives the same output). From 2 rows the tensor-core kernel (nf4_mma) is a
candidate too, and past 8 rows the only one. The tile (kernel, warps, blocks a step, K split) is timed per product
shape and row count at its first call, and kept per GPU for later processes (lab.engine.kernels.tiles);
`python -m lab.bench kernels` sweeps more.

    LAB_KERNELS=lab     use this kernel (and int8_mm's for LLM.int8) in the engine's decode step (default: bnb,
                        bitsandbytes' own forward)
    LAB_NF4_DECODE=lut  the gather decode on CUDA too (default there: prmt)
    TRITON_INTERPRET=1  runs it on a CPU through Triton's interpreter (what the tests do)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings

import torch

from lab.engine.kernels import tiles

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only torch without triton: `supports` says so
    triton = tl = None
else:
    from lab.engine.kernels.nf4_decode import decode_lut, decode_prmt, scales, table_bytes, x_columns
    from lab.engine.kernels.nf4_mma import nf4_mma

MAX_ROWS = 64  # up to 8 on the CUDA cores (nf4_gemv) or the tensor cores (nf4_mma); 9-64 on the tensor cores
BLOCK = 64  # codes per absmax: the only blocksize this kernel reads


def kernels() -> str:
    """Which kernels the engine runs for NF4 and LLM.int8 products of up to 64 rows: "lab" (this module and
    int8_mm) or "bnb" (bitsandbytes' forward and operators)."""
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


# ---- the kernel ----------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _x8(x_ptr, offs, X_PAIRS: tl.constexpr, X_ASM: tl.constexpr):
        """x at the 8 columns of each word (`offs`: the first), in nibble order (nibble i is column i ^ 1), as
        float32. With X_PAIRS x is bfloat16 read as int32 pairs (`offs` counts pairs): column 2p is pair p's low
        half, 2p + 1 its high half; X_ASM reads a word's 4 pairs with one 128-bit load (CUDA)."""
        if X_ASM:
            return x_columns(x_ptr + offs)
        if X_PAIRS:
            hi = -65536  # 0xffff0000: a bfloat16 in the high half is its float32
            p0 = tl.load(x_ptr + offs)
            p1 = tl.load(x_ptr + offs + 1)
            p2 = tl.load(x_ptr + offs + 2)
            p3 = tl.load(x_ptr + offs + 3)
            return ((p0 & hi).to(tl.float32, bitcast=True), (p0 << 16).to(tl.float32, bitcast=True),
                    (p1 & hi).to(tl.float32, bitcast=True), (p1 << 16).to(tl.float32, bitcast=True),
                    (p2 & hi).to(tl.float32, bitcast=True), (p2 << 16).to(tl.float32, bitcast=True),
                    (p3 & hi).to(tl.float32, bitcast=True), (p3 << 16).to(tl.float32, bitcast=True))
        return (tl.load(x_ptr + offs + 1).to(tl.float32), tl.load(x_ptr + offs).to(tl.float32),
                tl.load(x_ptr + offs + 3).to(tl.float32), tl.load(x_ptr + offs + 2).to(tl.float32),
                tl.load(x_ptr + offs + 5).to(tl.float32), tl.load(x_ptr + offs + 4).to(tl.float32),
                tl.load(x_ptr + offs + 7).to(tl.float32), tl.load(x_ptr + offs + 6).to(tl.float32))

    @triton.jit
    def _row(acc, x_ptr, offs, v0, v1, v2, v3, v4, v5, v6, v7, scale, X_PAIRS: tl.constexpr, X_ASM: tl.constexpr):
        """acc + scale * (the 8 codes of each word . x at their columns), for one input row."""
        x0, x1, x2, x3, x4, x5, x6, x7 = _x8(x_ptr, offs, X_PAIRS, X_ASM)
        part = v0 * x0
        part += v1 * x1
        part += v2 * x2
        part += v3 * x3
        part += v4 * x4
        part += v5 * x5
        part += v6 * x6
        part += v7 * x7
        return acc + part * scale[:, None]

    @triton.jit
    def _put(acc, r: tl.constexpr, n, pid_s, bias_ptr, out_ptr, part_ptr, N, HAS_BIAS: tl.constexpr,
             PARTS: tl.constexpr, ROWS: tl.constexpr):
        y = tl.sum(acc, axis=1)
        if not PARTS:
            if HAS_BIAS:
                y += tl.load(bias_ptr + n, mask=n < N, other=0.0).to(tl.float32)
            tl.store(out_ptr + r * N + n, y.to(out_ptr.dtype.element_ty), mask=n < N)
        else:
            tl.store(part_ptr + (pid_s * ROWS + r) * N + n, y, mask=n < N)

    @triton.jit
    def nf4_gemv(x_ptr, w_ptr, absmax_ptr, absq_ptr, abs2_ptr, code2_ptr, offset_ptr, code_ptr, bias_ptr,
                  out_ptr, part_ptr, N, KB, row_words, stride_x, blocks_per_split,
                  NESTED: tl.constexpr, BLOCK2: tl.constexpr, HAS_BIAS: tl.constexpr, PARTS: tl.constexpr,
                  ROWS: tl.constexpr, BN: tl.constexpr, NB: tl.constexpr, PRMT: tl.constexpr,
                  X_PAIRS: tl.constexpr, X_ASM: tl.constexpr):
        # A program: BN weight rows (BN = 16 x warps: a thread holds 4 words, 128 bits, of one row per block)
        # over its share of K, NB blocks of 64 codes (8 int32 words) per loop step, each block its own [BN, 8]
        # tile. Each word is decoded once and used for all ROWS input rows (accumulators acc0..acc7).
        # Layouts: the word load is the only load of BN x 8 elements; the absmax ([BN]) and x ([1, 8]) loads
        # have fewer elements than threads, so the compiler recomputes them in the words' layout instead of
        # moving data through shared memory in the loop (whatever order it gives dimensions of equal stride).
        pid_n, pid_s = tl.program_id(0), tl.program_id(1)
        n = pid_n * BN + tl.arange(0, BN)
        n_read = tl.minimum(n, N - 1)  # rows past N read row N - 1 (no mask: wide loads); never stored
        j = tl.arange(0, 8)
        rows = n_read[:, None] * row_words + j[None, :]
        XW: tl.constexpr = 4 if X_PAIRS else 8  # x's elements per word of codes
        start = pid_s * blocks_per_split  # a multiple of NB: every step is whole (the wrapper checks KB % NB)
        stop = tl.minimum(start + blocks_per_split, KB)
        if PRMT:
            l0, l1, l2, l3, h0, h1, h2, h3 = table_bytes(code_ptr, KB >> 30, True)  # KB < 2^30: zero
        acc0 = tl.zeros([BN, 8], dtype=tl.float32)  # per word slot; summed once, at the end
        acc1 = acc0
        acc2 = acc0
        acc3 = acc0
        acc4 = acc0
        acc5 = acc0
        acc6 = acc0
        acc7 = acc0
        for b0 in range(start, stop, NB):
            for kb in tl.static_range(NB):
                b = b0 + kb
                words = tl.load(w_ptr + rows + b * 8, eviction_policy="evict_first")
                if PRMT:
                    v0, v1, v2, v3, v4, v5, v6, v7 = decode_prmt(words, l0, l1, l2, l3, h0, h1, h2, h3)
                else:
                    v0, v1, v2, v3, v4, v5, v6, v7 = decode_lut(words, code_ptr)
                scale = scales(absmax_ptr, absq_ptr, abs2_ptr, code2_ptr, offset_ptr, n_read * KB + b, BLOCK2,
                                NESTED)
                xo = (b * 8 + j[None, :]) * XW
                acc0 = _row(acc0, x_ptr, xo, v0, v1, v2, v3, v4, v5, v6, v7, scale, X_PAIRS, X_ASM)
                if ROWS > 1:
                    acc1 = _row(acc1, x_ptr, xo + stride_x, v0, v1, v2, v3, v4, v5, v6, v7, scale, X_PAIRS, X_ASM)
                if ROWS > 2:
                    acc2 = _row(acc2, x_ptr, xo + 2 * stride_x, v0, v1, v2, v3, v4, v5, v6, v7, scale, X_PAIRS,
                                X_ASM)
                if ROWS > 3:
                    acc3 = _row(acc3, x_ptr, xo + 3 * stride_x, v0, v1, v2, v3, v4, v5, v6, v7, scale, X_PAIRS,
                                X_ASM)
                if ROWS > 4:
                    acc4 = _row(acc4, x_ptr, xo + 4 * stride_x, v0, v1, v2, v3, v4, v5, v6, v7, scale, X_PAIRS,
                                X_ASM)
                if ROWS > 5:
                    acc5 = _row(acc5, x_ptr, xo + 5 * stride_x, v0, v1, v2, v3, v4, v5, v6, v7, scale, X_PAIRS,
                                X_ASM)
                if ROWS > 6:
                    acc6 = _row(acc6, x_ptr, xo + 6 * stride_x, v0, v1, v2, v3, v4, v5, v6, v7, scale, X_PAIRS,
                                X_ASM)
                if ROWS > 7:
                    acc7 = _row(acc7, x_ptr, xo + 7 * stride_x, v0, v1, v2, v3, v4, v5, v6, v7, scale, X_PAIRS,
                                X_ASM)
        _put(acc0, 0, n, pid_s, bias_ptr, out_ptr, part_ptr, N, HAS_BIAS, PARTS, ROWS)
        if ROWS > 1:
            _put(acc1, 1, n, pid_s, bias_ptr, out_ptr, part_ptr, N, HAS_BIAS, PARTS, ROWS)
        if ROWS > 2:
            _put(acc2, 2, n, pid_s, bias_ptr, out_ptr, part_ptr, N, HAS_BIAS, PARTS, ROWS)
        if ROWS > 3:
            _put(acc3, 3, n, pid_s, bias_ptr, out_ptr, part_ptr, N, HAS_BIAS, PARTS, ROWS)
        if ROWS > 4:
            _put(acc4, 4, n, pid_s, bias_ptr, out_ptr, part_ptr, N, HAS_BIAS, PARTS, ROWS)
        if ROWS > 5:
            _put(acc5, 5, n, pid_s, bias_ptr, out_ptr, part_ptr, N, HAS_BIAS, PARTS, ROWS)
        if ROWS > 6:
            _put(acc6, 6, n, pid_s, bias_ptr, out_ptr, part_ptr, N, HAS_BIAS, PARTS, ROWS)
        if ROWS > 7:
            _put(acc7, 7, n, pid_s, bias_ptr, out_ptr, part_ptr, N, HAS_BIAS, PARTS, ROWS)

    @triton.jit
    def sum_parts(part_ptr, bias_ptr, out_ptr, R, N, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
                   RP: tl.constexpr, BN: tl.constexpr):
        n = tl.program_id(0) * BN + tl.arange(0, BN)
        r = tl.arange(0, RP)
        s = tl.arange(0, SPLIT)
        mask = (r[None, :, None] < R) & (n[None, None, :] < N)
        parts = tl.load(part_ptr + (s[:, None, None] * R + r[None, :, None]) * N + n[None, None, :], mask=mask,
                        other=0.0)
        y = tl.sum(parts, axis=0)
        if HAS_BIAS:
            y += tl.load(bias_ptr + n, mask=n < N, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + r[:, None] * N + n[None, :], y.to(out_ptr.dtype.element_ty),
                 mask=(r[:, None] < R) & (n[None, :] < N))


# ---- tiles, and the launch -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Tile:
    """One launch shape: warps per program (a program has 16 weight rows a warp), blocks of 64 codes per loop
    step (a power of two; halved until it divides K / 64), and programs along K (0: split_of's choice). With
    `mma` (weight rows a program) the tensor-core kernel of nf4_mma runs instead, one block a loop step."""
    warps: int
    nb: int
    split: int = 0
    mma: int = 0

    @property
    def bn(self) -> int:
        return self.mma or 16 * self.warps

    def __str__(self) -> str:
        return f"mma{self.mma}/w{self.warps}/s{self.split or 'auto'}" if self.mma else \
            f"w{self.warps}/nb{self.nb}/s{self.split or 'auto'}"


# Timed once per product shape on the GPU (python -m lab.bench kernels --sweep tries many more). The H200 sweep's
# fastest tiles split K more than split_of does for one row (18944x3584: w1/nb8/s4 26.5 µs against 42.3 for the
# split it picks), so explicit splits are candidates too.
# Splits do not change the compiled kernel, (warps, nb) and the rows do: 5 compiles per row count for nf4_gemv, and
# 3 for nf4_mma, whose 2-16 rows are one compile (the tensor cores' 16-row tile).
CANDIDATES = tuple(Tile(w, nb, s) for w, nb in ((4, 2), (4, 4), (4, 8), (2, 8), (1, 8)) for s in (0, 4, 8, 16))
MMA_CANDIDATES = tuple(Tile(4, 1, s, bn) for bn in (32, 64, 128) for s in (0, 2, 4, 8))
# Up to GEMV_ROWS rows nf4_gemv is timed, from 2 nf4_mma: at 8 rows nf4_gemv runs 26 instructions a code on sm_90
# (8 FMAs each), nf4_mma 10 (nf4_sass counts them), at 1 row 7 against 10.
GEMV_ROWS = 2
GEMV_MAX_ROWS = 8  # its accumulators
DEFAULT = Tile(4, 4)  # while a CUDA graph is captured nothing can be timed; the decoder warms up first
DEFAULT_MMA = Tile(4, 1, 0, 64)
INTERPRETED = Tile(1, 2)
INTERPRETED_MMA = Tile(4, 1, 0, 32)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def split_of(n: int, kb: int, device: torch.device, bn: int = 64) -> int:
    """Programs along K: enough programs for every SM twice over (a power of two, at most 16)."""
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 4
    split = 1
    while triton.cdiv(n, bn) * split < 2 * sms and kb // (split * 2) >= 4 and split < 16:
        split *= 2
    return split


def decoder() -> str:
    """How codes are decoded: "prmt" (the register table, CUDA) or "lut" (a gather; the interpreter, and the
    fallback when the PTX does not compile). LAB_NF4_DECODE=lut|prmt overrides, for comparisons."""
    if interpreted():
        return "lut"
    value = os.environ.get("LAB_NF4_DECODE", "").strip().lower()
    if value and value not in ("lut", "prmt"):
        raise ValueError(f"LAB_NF4_DECODE must be 'lut' or 'prmt', not {value!r}.")
    return value or ("lut" if PRMT_FAILED else "prmt")


PRMT_FAILED: list[str] = []  # why the register-table decode did not compile, if it did not
_PRMT_RAN: list[bool] = []  # it has run once: later errors are errors, not a missing toolchain
_SOURCES = [os.path.join(os.path.dirname(__file__), f) for f in ("nf4.py", "nf4_mma.py", "nf4_decode.py")]
TABLE = tiles.Table("nf4", Tile, _SOURCES)  # product key -> the tile its timing chose, per GPU, kept on disk


def _launch(x: torch.Tensor, words: torch.Tensor, absmax: torch.Tensor, absq: torch.Tensor | None,
            abs2: torch.Tensor | None, code2: torch.Tensor | None, offset: torch.Tensor | None, code: torch.Tensor,
            bias: torch.Tensor | None, n: int, k: int, block2: int, tile: Tile | None = None,
            decode: str | None = None) -> torch.Tensor:
    decode = decode or decoder()
    args = (x, words, absmax, absq, abs2, code2, offset, code, bias, n, k, block2)
    if decode != "prmt" or _PRMT_RAN or torch.cuda.is_current_stream_capturing():
        return _tiled(args, tile, decode)
    try:  # the first launch compiles the inline PTX: if the toolchain refuses it, the exact gather runs
        out = _tiled(args, tile, decode)
    except Exception as e:  # noqa: BLE001 - triton raises several kinds for a failed compile
        PRMT_FAILED.append(f"{type(e).__name__}: {e}"[:4000])
        warnings.warn(f"The NF4 register-table decode failed; the gather runs instead: {PRMT_FAILED[-1]}")
        return _tiled(args, tile, "lut")
    _PRMT_RAN.append(True)
    return out


def _tiled(args: tuple, tile: Tile | None, decode: str) -> torch.Tensor:
    """Launch with `tile`, else the tile timed fastest for this product (timed at its first call; while a
    CUDA graph is being captured nothing can be timed, and the decoder warms every step up before that)."""
    x, n, k = args[0], args[9], args[10]
    key = (n, k // BLOCK, x.shape[0], args[3] is not None, args[8] is not None, x.dtype, decode)
    wide = x.shape[0] > GEMV_ROWS
    if tile is None and interpreted():
        tile = INTERPRETED_MMA if wide else INTERPRETED
    if tile is None:
        tile = TABLE.choose(key, x.device, DEFAULT_MMA if wide else DEFAULT, lambda: _fastest(args, decode))
    return _run(*args, tile=tile, decode=decode)


def chosen(x: torch.Tensor, module) -> Tile | None:
    """The tile timed fastest for this product (None before its first call on this GPU), for reports."""
    qs = module.weight.quant_state
    n, k = qs.shape
    key = (n, k // BLOCK, x.reshape(-1, k).shape[0], bool(qs.nested), module.bias is not None, x.dtype, decoder())
    return INTERPRETED if interpreted() else TABLE.known(key, x.device)


def _fastest(args: tuple, decode: str) -> Tile:
    """The quickest of CANDIDATES for this product, each timed as a replayed CUDA graph, as the decode step runs it
    (timed launch by launch, the host's few µs per launch hid the kernels' differences and picked slow tiles)."""
    timed, rows = {}, args[0].shape[0]
    for tile in (CANDIDATES if rows <= GEMV_ROWS else ()) + (MMA_CANDIDATES if rows > 1 else ()):
        if tile.split and (args[10] // BLOCK) // tile.split < tile.nb:
            continue  # fewer blocks a program than one step reads
        try:
            _run(*args, tile=tile, decode=decode)  # compiled outside the capture
            timed[tile] = triton.testing.do_bench_cudagraph(lambda t=tile: _run(*args, tile=t, decode=decode), rep=20)
        except Exception as e:  # noqa: BLE001 - a tile this GPU cannot run; the others may
            error = e
    if not timed:
        raise error
    return min(timed, key=timed.get)


def _run(x, words, absmax, absq, abs2, code2, offset, code, bias, n: int, k: int, block2: int, *, tile: Tile,
         decode: str) -> torch.Tensor:
    rows = x.shape[0]
    kb = k // BLOCK
    nb = tile.nb
    while kb % nb:
        nb //= 2
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    split = tile.split or split_of(n, kb, x.device, tile.bn)
    per = triton.cdiv(triton.cdiv(kb, split), nb) * nb  # whole steps; the last programs may get fewer or none
    nested = absq is not None
    dummy = code  # pointers a constexpr branch never reads still need a tensor
    part = torch.empty((split, rows, n), dtype=torch.float32, device=x.device) if split > 1 else out
    weights = (words, absmax if not nested else dummy, absq if nested else dummy, abs2 if nested else dummy,
               code2 if nested else dummy, offset if nested else dummy, code, bias if bias is not None else dummy,
               out, part)
    flags = {"NESTED": nested, "BLOCK2": block2 if nested else 1, "HAS_BIAS": bias is not None, "PARTS": split > 1,
             "BN": tile.bn, "PRMT": decode == "prmt", "num_warps": tile.warps}
    grid = (triton.cdiv(n, tile.bn), split)
    if not tile.mma and rows > GEMV_MAX_ROWS:
        raise ValueError(f"nf4_gemv takes up to {GEMV_MAX_ROWS} rows, not {rows}: use an mma tile")
    if tile.mma:
        nf4_mma[grid](x, *weights, rows, n, kb, kb * 8, x.stride(0), per, BR=max(16, triton.next_power_of_2(rows)),
                      IEEE=x.dtype == torch.float32 or interpreted(), **flags)
    else:
        pairs = x.dtype == torch.bfloat16 and x.stride(0) % 8 == 0 and x.data_ptr() % 16 == 0
        xv = x.view(torch.int32) if pairs else x  # the same bytes, two columns a word
        nf4_gemv[grid](xv, *weights, n, kb, kb * 8, xv.stride(0), per, ROWS=rows, NB=nb, X_PAIRS=pairs,
                       X_ASM=pairs and decode == "prmt", **flags)
    if split > 1:
        rp = triton.next_power_of_2(rows)
        bn = max(16, min(64, 8192 // (split * rp)))  # [split, rows, bn] partial sums a program: bounded registers
        sum_parts[(triton.cdiv(n, bn),)](part, bias if bias is not None else dummy, out, rows, n,
                                          HAS_BIAS=bias is not None, SPLIT=split, RP=rp, BN=bn)
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


def nf4_matmul(x: torch.Tensor, module, tile: Tile | None = None, decode: str | None = None) -> torch.Tensor:
    """x [..., K] @ W.T + b for a bitsandbytes NF4 `Linear4bit` with at most 64 rows (check `supports` first).
    `tile` and `decode` (benchmarks, tests) launch that tile / decoder as it is, outside the custom operator."""
    qs = module.weight.quant_state
    n, k = qs.shape
    words = module.weight.data.view(-1).view(torch.int32)  # the same bytes, 8 codes a word
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if qs.nested:
        s2 = qs.state2
        args = (x2, words, s2.absmax, qs.absmax, s2.absmax, s2.code, qs.offset.reshape(1), qs.code, module.bias,
                n, k, s2.blocksize)
    else:
        args = (x2, words, qs.absmax, None, None, None, None, qs.code, module.bias, n, k, 1)
    y = _nf4_op(*args) if tile is None and decode is None else _launch(*args, tile=tile, decode=decode)
    return y.reshape(*x.shape[:-1], n)
