"""NF4 products for 2-64 input rows on the tensor cores, straight from bitsandbytes' packed weights.

The matrix-vector kernel (lab.engine.kernels.nf4.nf4_gemv) decodes each word once and does one float32 FMA per
code and input row on the CUDA cores: at 8 rows that is 8 FMAs per code, and it fell to a third of bf16 cuBLAS's
speed. Here the decoded weights go to `tl.dot` instead (mma on the tensor cores), where 16 or 64 input rows cost
about what one does; the decode (the same register table, or the gather in the interpreter) runs once per code.

A program owns BN weight rows over its share of K (split K as in nf4_gemv, partial sums added by the same second
kernel). Per 64-code block (one absmax per weight row): the BN x 8 words are decoded into 8 tensors and joined
into a [BN, 64] tile, permuted back into K's order (the joins interleave), so x is read as it lies, a [BR, 64]
tile from L1/L2; the dot of the table values (bfloat16: exact for the register table, which is rounded to
bfloat16) with x sums in float32, and the block's absmax scales the [BR, BN] result once, not each weight.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # lab.engine.kernels.nf4.supports says so
    triton = tl = None
else:
    from lab.engine.kernels.nf4_decode import decode_lut, decode_prmt, scales, table_bytes

MAX_ROWS = 64

if triton is not None:

    @triton.jit
    def nf4_mma(x_ptr, w_ptr, absmax_ptr, absq_ptr, abs2_ptr, code2_ptr, offset_ptr, code_ptr, bias_ptr,
                out_ptr, part_ptr, R, N, KB, row_words, stride_x, blocks_per_split,
                NESTED: tl.constexpr, BLOCK2: tl.constexpr, HAS_BIAS: tl.constexpr, PARTS: tl.constexpr,
                BR: tl.constexpr, BN: tl.constexpr, PRMT: tl.constexpr, IEEE: tl.constexpr):
        pid_n, pid_s = tl.program_id(0), tl.program_id(1)
        n = pid_n * BN + tl.arange(0, BN)
        n_read = tl.minimum(n, N - 1)  # rows past N read row N - 1; never stored
        rows = n_read[:, None] * row_words + tl.arange(0, 8)[None, :]
        r = tl.arange(0, BR)
        xs = x_ptr + r[:, None] * stride_x + tl.arange(0, 64)[None, :]
        x_mask = r[:, None] < R
        start = pid_s * blocks_per_split
        stop = tl.minimum(start + blocks_per_split, KB)
        if PRMT:
            l0, l1, l2, l3, h0, h1, h2, h3 = table_bytes(code_ptr, KB >> 30, True)  # KB < 2^30: zero
        acc = tl.zeros([BR, BN], dtype=tl.float32)
        for b in range(start, stop):
            words = tl.load(w_ptr + rows + b * 8, eviction_policy="evict_first")
            if PRMT:
                v0, v1, v2, v3, v4, v5, v6, v7 = decode_prmt(words, l0, l1, l2, l3, h0, h1, h2, h3)
            else:
                v0, v1, v2, v3, v4, v5, v6, v7 = decode_lut(words, code_ptr)
            # v_i holds column i ^ 1 of each word: pairs (column 2m, 2m + 1) are (v_{2m+1}, v_{2m})
            w = tl.join(tl.join(tl.join(v1, v0), tl.join(v3, v2)), tl.join(tl.join(v5, v4), tl.join(v7, v6)))
            w = tl.reshape(tl.permute(w, (0, 1, 4, 3, 2)), [BN, 64])  # K's own order: [j, c, a, b]
            xk = tl.load(xs + b * 64, mask=x_mask, other=0.0)
            if not IEEE:
                part = tl.dot(xk, tl.trans(w.to(xk.dtype)))
            else:  # float32 x (the float32 twin), or 16-bit x in the interpreter, whose dot of 16-bit inputs is wrong:
                # the weights at x's precision, and products summed in float32 as the tensor cores sum them
                part = tl.dot(xk.to(tl.float32), tl.trans(w.to(xk.dtype).to(tl.float32)), input_precision="ieee")
            acc += part * scales(absmax_ptr, absq_ptr, abs2_ptr, code2_ptr, offset_ptr, n_read * KB + b, BLOCK2,
                                 NESTED)[None, :]
        mask = x_mask & (n[None, :] < N)
        if PARTS:
            tl.store(part_ptr + (pid_s * R + r[:, None]) * N + n[None, :], acc, mask=mask)
        else:
            if HAS_BIAS:
                acc += tl.load(bias_ptr + n, mask=n < N, other=0.0).to(tl.float32)[None, :]
            tl.store(out_ptr + r[:, None] * N + n[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)
