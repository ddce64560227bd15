"""LLM.int8 products for decode rows (up to 64) in one pass over bitsandbytes' int8 weights.

`Int8Linear` (lab.engine.kernels.int8) computes a product with bitsandbytes' own operators: find the outlier
columns, quantize the input's rows, the int8 matmul, dequantize, and the outlier columns in 16 bits (index,
dequantize, addmm): about a dozen kernels a product, each a few µs at one row, which is why LLM.int8 decodes at
a third of bf16's speed though it reads half the bytes. Here three launches do the same arithmetic:

- `int8_scan`, one program per 128 columns over every row: marks the outlier columns (some row holds |x| >=
  threshold, x rounded to float16 first as bitsandbytes rounds it), takes each row's absmax over its other
  values (the scale bitsandbytes' quantizer gives the row once its outliers are zeroed; a float atomic max across
  programs) and counts the outlier columns;
- `int8_mm`, BN weight rows a program and K split over programs (as for NF4): reads each int8 weight once into
  an int8 dot on the tensor cores with the quantized rows, round(x * 127 / absmax) with the outlier columns
  zeroed, summed in int32 (bitsandbytes' int8 matmul, exactly), scaled by absmax * SCB / 127^2 (its dequantize).
  A loop step that holds an outlier column also takes a float16 dot of the outlier columns' own x with the same
  weights, scaled by SCB / 127 (its dequantized weight); the bias is added and the output rounded once;
- with K split, nf4's `sum_parts` adds the programs' parts in a fixed order.

bitsandbytes rounds the dequantized outlier weights, and the int8 part before the outliers are added, to float16;
this rounds once at the end, so it stays within float16 rounding of bitsandbytes' answer (tests/engine/
test_int8_kernel.py checks it on a CPU through Triton's interpreter). There are no outlier slots to outgrow: every
column is read, marked or not. Longer inputs (prompts past 64 tokens) keep bitsandbytes' operators.

    LAB_KERNELS=lab   these products in the engine's decode step (with the NF4 kernels; default: bnb)
"""

from __future__ import annotations

import dataclasses

import torch

from lab.engine.kernels import nf4, tiles

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only torch without triton: `supports` says so
    triton = tl = None

MAX_ROWS = 64
SCAN_COLUMNS = 128
DEQUANT = 6.200124e-05  # 1 / 127^2, bitsandbytes' int8_mm_dequant constant
PER_CODE = 7.874015718698502e-3  # 1 / 127, its int8_vectorwise_dequant constant


def supports(cb: torch.Tensor, scb: torch.Tensor, x: torch.Tensor) -> str | None:
    """None when `int8_matmul(x, cb, scb, ...)` can run; else the reason it cannot."""
    if triton is None:
        return "Triton is not installed"
    if x.device.type == "cuda":
        if nf4.interpreted():
            return "TRITON_INTERPRET=1 runs on the CPU only"
    elif not (x.device.type == "cpu" and nf4.interpreted()):
        return f"needs CUDA (or TRITON_INTERPRET=1 on a CPU), not {x.device.type}"
    if cb.dtype != torch.int8 or cb.dim() != 2 or cb.stride() != (cb.shape[1], 1):
        return "the weight is not a row-major int8 [N, K]"
    if scb.dtype != torch.float32 or scb.numel() != cb.shape[0]:
        return "the weight's scales are not float32, one per row"
    if x.shape[-1] != cb.shape[1] or x.numel() // cb.shape[1] > MAX_ROWS or \
            x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"takes up to {MAX_ROWS} rows of {cb.shape[1]} 16/32-bit floats"
    if cb.device != x.device:
        return "the weight and the input are on different devices"
    return None


if triton is not None:

    @triton.jit
    def int8_scan(x_ptr, stats_ptr, flag_ptr, R, K, stride_x, threshold, BR: tl.constexpr, BK: tl.constexpr):
        """flag[k] = some row has |x| >= threshold at k; stats[r] = max(stats[r], row r's other |x| here);
        stats[R] += the columns flagged here. stats starts at zero."""
        k = tl.program_id(0) * BK + tl.arange(0, BK)
        r = tl.arange(0, BR)
        mask = (r[:, None] < R) & (k[None, :] < K)
        x = tl.load(x_ptr + r[:, None] * stride_x + k[None, :], mask=mask, other=0.0)
        a = tl.abs(x.to(tl.float16).to(tl.float32))
        big = a >= threshold
        col = tl.max(big.to(tl.int32), axis=0)
        tl.store(flag_ptr + k, col.to(tl.int8), mask=k < K)
        tl.atomic_max(stats_ptr + r, tl.max(tl.where(big, 0.0, a), axis=1), mask=r < R)
        tl.atomic_add(stats_ptr + R, tl.sum(col, axis=0).to(tl.float32))

    @triton.jit
    def int8_mm(x_ptr, w_ptr, scb_ptr, stats_ptr, flag_ptr, bias_ptr, out_ptr, part_ptr, seen_ptr, R, N, K,
                 stride_x, per, HAS_BIAS: tl.constexpr, PARTS: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr,
                 BK: tl.constexpr, IEEE: tl.constexpr):
        pid_n, pid_s = tl.program_id(0), tl.program_id(1)
        n = pid_n * BN + tl.arange(0, BN)
        n_read = tl.minimum(n, N - 1)  # rows past N read row N - 1; never stored
        r = tl.arange(0, BR)
        r_mask = r < R
        row_max = tl.load(stats_ptr + r, mask=r_mask, other=0.0)
        inv = tl.where(row_max > 0, 127.0 / row_max, 0.0)  # an all-zero row quantizes to zeros
        start = pid_s * per
        stop = tl.minimum(start + per, K)
        if IEEE:  # the interpreter, whose dots of 8- and 16-bit inputs are wrong: the same values in float32
            acc_q = tl.zeros([BR, BN], dtype=tl.float32)
        else:
            acc_q = tl.zeros([BR, BN], dtype=tl.int32)
        acc_o = tl.zeros([BR, BN], dtype=tl.float32)
        for k0 in range(start, stop, BK):
            k = k0 + tl.arange(0, BK)
            k_mask = k < stop
            x = tl.load(x_ptr + r[:, None] * stride_x + k[None, :], mask=r_mask[:, None] & k_mask[None, :],
                        other=0.0).to(tl.float16).to(tl.float32)
            flag = tl.load(flag_ptr + k, mask=k_mask, other=0).to(tl.int32)
            outlier = (flag != 0)[None, :]
            v = x * inv[:, None]
            q = tl.where(outlier, 0.0, (v + 12582912.0) - 12582912.0)  # round half to even, as torch.round
            w = tl.load(w_ptr + n_read[:, None] * K + k[None, :], mask=k_mask[None, :], other=0,
                        eviction_policy="evict_first")
            if IEEE:
                acc_q += tl.dot(q, tl.trans(w.to(tl.float32)), input_precision="ieee")
            else:  # int8 x int8 on the tensor cores, summed in int32: bitsandbytes' int8 matmul, exactly
                acc_q += tl.dot(q.to(tl.int8), tl.trans(w))
            if tl.max(flag, axis=0) != 0:  # an outlier column in this step (a few steps of a product have one)
                xo = tl.where(outlier, x, 0.0)
                if IEEE:
                    acc_o += tl.dot(xo, tl.trans(w.to(tl.float32)), input_precision="ieee")
                else:
                    acc_o += tl.dot(xo.to(tl.float16), tl.trans(w.to(tl.float16)))
        scb = tl.load(scb_ptr + n_read)
        y = acc_q.to(tl.float32) * (row_max[:, None] * scb[None, :]) * 6.200124e-05 \
            + acc_o * (scb[None, :] * 7.874015718698502e-3)
        mask = r_mask[:, None] & (n[None, :] < N)
        if PARTS:
            tl.store(part_ptr + (pid_s * R + r[:, None]) * N + n[None, :], y, mask=mask)
        else:
            if HAS_BIAS:
                y += tl.load(bias_ptr + n, mask=n < N, other=0.0).to(tl.float32)[None, :]
            tl.store(out_ptr + r[:, None] * N + n[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)
        if pid_n == 0 and pid_s == 0:  # the scan has finished: its count of outlier columns is whole
            tl.atomic_max(seen_ptr, tl.load(stats_ptr + R).to(tl.int64))


@dataclasses.dataclass(frozen=True)
class Tile:
    """One launch shape: weight rows a program, columns a loop step, programs along K (0: nf4.split_of's
    choice), warps."""
    bn: int
    bk: int
    split: int = 0
    warps: int = 4

    def __str__(self) -> str:
        return f"bn{self.bn}/bk{self.bk}/s{self.split or 'auto'}/w{self.warps}"


# Past 16 rows the x tile ([rows, bk] in float32 while it is quantized) needs short steps to stay in registers
# (at 64 rows and bk 256 the compiled loop spills; tests/engine/test_int8_kernel.py compiles it for sm_90).
CANDIDATES = tuple(Tile(bn, bk, s) for bn, bk in ((32, 256), (64, 256), (128, 128)) for s in (0, 2, 4, 8))
WIDE_CANDIDATES = tuple(Tile(bn, bk, s) for bn, bk in ((32, 128), (64, 64), (128, 64)) for s in (0, 2, 4, 8))
DEFAULT = Tile(64, 256)  # while a CUDA graph is captured nothing can be timed; the decoder warms up first
DEFAULT_WIDE = Tile(64, 64)
INTERPRETED = Tile(32, 64)
TABLE = tiles.Table("int8", Tile, [__file__])  # product key -> the tile its timing chose, per GPU, kept on disk


def _run(x, cb, scb, bias, seen, threshold: float, *, tile: Tile) -> torch.Tensor:
    rows, k = x.shape
    n = cb.shape[0]
    stats = torch.zeros(rows + 1, dtype=torch.float32, device=x.device)  # row absmax, then the outlier count
    flags = torch.empty(k, dtype=torch.int8, device=x.device)
    br = triton.next_power_of_2(rows)
    int8_scan[(triton.cdiv(k, SCAN_COLUMNS),)](x, stats, flags, rows, k, x.stride(0), threshold, BR=br,
                                            BK=SCAN_COLUMNS)
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    split = tile.split or nf4.split_of(n, k // 64, x.device, tile.bn)
    per = triton.cdiv(triton.cdiv(k, split), tile.bk) * tile.bk  # whole steps; the last programs may get fewer
    part = torch.empty((split, rows, n), dtype=torch.float32, device=x.device) if split > 1 else out
    dummy = scb
    int8_mm[(triton.cdiv(n, tile.bn), split)](
        x, cb, scb, stats, flags, bias if bias is not None else dummy, out, part, seen, rows, n, k, x.stride(0),
        per, HAS_BIAS=bias is not None, PARTS=split > 1, BR=max(16, br), BN=tile.bn, BK=tile.bk,
        IEEE=nf4.interpreted(), num_warps=tile.warps)
    if split > 1:
        bn = max(16, min(64, 8192 // (split * br)))
        nf4.sum_parts[(triton.cdiv(n, bn),)](part, bias if bias is not None else dummy, out, rows, n,
                                              HAS_BIAS=bias is not None, SPLIT=split, RP=br, BN=bn)
    return out


def _fastest(args: tuple) -> Tile:
    """The quickest of CANDIDATES for this product, each timed as a replayed CUDA graph (as the step runs it)."""
    timed, error = {}, None
    for tile in CANDIDATES if args[0].shape[0] <= 16 else WIDE_CANDIDATES:
        try:
            _run(*args, tile=tile)  # compiled outside the capture
            timed[tile] = triton.testing.do_bench_cudagraph(lambda t=tile: _run(*args, tile=t), rep=20)
        except Exception as e:  # noqa: BLE001 - a tile this GPU cannot run; the others may
            error = e
    if not timed:
        raise error
    return min(timed, key=timed.get)


def _key(x: torch.Tensor, cb: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    return cb.shape[0], cb.shape[1], x.reshape(-1, cb.shape[1]).shape[0], bias is not None, x.dtype


def chosen(x: torch.Tensor, cb: torch.Tensor, bias: torch.Tensor | None) -> Tile | None:
    """The tile timed fastest for this product (None before its first call on this GPU), for reports."""
    return INTERPRETED if nf4.interpreted() else TABLE.known(_key(x, cb, bias), x.device)


def _launch(x, cb, scb, bias, seen, threshold: float, tile: Tile | None = None) -> torch.Tensor:
    args = (x, cb, scb, bias, seen, threshold)
    if tile is None and nf4.interpreted():
        tile = INTERPRETED
    if tile is None:
        # the timing's launches raise `seen` to this input's count, which the real launch does anyway
        tile = TABLE.choose(_key(x, cb, bias), x.device, DEFAULT if x.shape[0] <= 16 else DEFAULT_WIDE,
                            lambda: _fastest(args))
    return _run(*args, tile=tile)


@torch.library.custom_op("lab::int8_matmul", mutates_args=("seen",))
def _int8_op(x: torch.Tensor, cb: torch.Tensor, scb: torch.Tensor, bias: torch.Tensor | None, seen: torch.Tensor,
             threshold: float) -> torch.Tensor:
    # an opaque operator to torch.compile: the decode step is compiled, the kernels are launched as they are
    return _launch(x, cb, scb, bias, seen, threshold)


@_int8_op.register_fake
def _(x, cb, scb, bias, seen, threshold):
    return x.new_empty((x.shape[0], cb.shape[0]))


def int8_matmul(x: torch.Tensor, cb: torch.Tensor, scb: torch.Tensor, bias: torch.Tensor | None, threshold: float,
                seen: torch.Tensor, tile: Tile | None = None) -> torch.Tensor:
    """x [..., K] @ W.T + b as bitsandbytes' LLM.int8 computes it, W = cb * scb / 127 (int8 rows, float32 scales),
    for at most 64 rows (check `supports` first); raises `seen` (int64 []) to this input's outlier columns.
    `tile` (benchmarks, tests) launches that tile as it is, outside the custom operator."""
    k = cb.shape[1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = _int8_op(x2, cb, scb, bias, seen, float(threshold)) if tile is None else \
        _launch(x2, cb, scb, bias, seen, threshold, tile)
    return y.reshape(*x.shape[:-1], cb.shape[0])
