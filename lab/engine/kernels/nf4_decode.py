"""Decoding 8 NF4 codes (one int32 word) into 8 float32 values, and the blocks' absmax, for the NF4 kernels
(lab.engine.kernels.nf4 and nf4_mma).

Two ways, with one interface: `decode_lut(words, code_ptr)` and `decode_prmt(words, *table_bytes(code_ptr))`
each return the values of the codes at bit shifts 0, 4, ..., 28 of every word, as 8 float32 tensors of the
words' shape.

`decode_lut` gathers each code from the 16-entry float32 table in global memory: exact, one L1 access per
code, and what Triton's interpreter (TRITON_INTERPRET=1, CI) runs.

`decode_prmt` holds the table in 8 REGISTERS and decodes with the PTX byte permute `prmt.b32` (the way
Marlin-style kernels decode): the 16 entries rounded to bfloat16 are split into a low-byte table L and a
high-byte table H of 16 bytes (4 registers) each. `prmt.b32 d, a, b, c` (default mode) builds byte k of d
from the byte of the pair {b:a} (8 bytes) that nibble k of c selects; bit 3 of that nibble is a
sign-replicate flag, not an index bit. So for 4 codes at once:

    s = codes & 0x7777                     the codes' 3 low bits as in-pair selectors (bit 3 cleared)
    la = prmt(L0, L1, s); lb = prmt(L2, L3, s); ha, hb alike from H   candidates for codes 0-7 and 8-15
    t = ((codes >> 1) & 0x4444) | 0x3210   nibble k: k, plus 4 where code k has bit 3 set
    lo = prmt(la, lb, t); hi = prmt(ha, hb, t)                         byte k: code k's low / high byte
    p = prmt(lo, hi, 0x5140); q = prmt(lo, hi, 0x7362)                  two bfloat16 pairs
    v0 = p << 16; v1 = p & 0xffff0000; v2 = q << 16; v3 = q & 0xffff0000

and the same on the word's upper 16 bits. A bfloat16 pattern in the high half of 32 bits IS that number
as float32, so no conversion instruction runs: 30 integer instructions per 8 codes (ptxas fuses the
selector arithmetic into fewer), no memory access.
tests/engine/test_nf4_decode.py executes this exact PTX text in a numpy model of the instructions.

Numerics: rounding the table to bfloat16 (round to nearest even, 8 significant bits) changes each weight
by at most half a unit in the 8th bit, 2^-8 of itself (NF4's worst entry, -0.5251 -> -0.5234, moves by
3.1e-3; -1, 0 and 1 are exact); the absmax stays float32 and the sums are float32. bitsandbytes' own
forward rounds every dequantized weight (table x absmax) to bfloat16, an error of the same size.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # lab.engine.kernels.nf4.supports says so
    triton = tl = None


def _prmt_half(sel: str, pair: str, out: int) -> list[str]:
    """PTX for 4 codes: selectors `sel` (in-pair) and `pair` (low/high candidates), outputs $out..$out+3."""
    return [f"prmt.b32 la, $9, $10, {sel};", f"prmt.b32 lb, $11, $12, {sel};",
            f"prmt.b32 ha, $13, $14, {sel};", f"prmt.b32 hb, $15, $16, {sel};",
            f"prmt.b32 lo, la, lb, {pair};", f"prmt.b32 hi, ha, hb, {pair};",
            "prmt.b32 p, lo, hi, 0x5140;", "prmt.b32 q, lo, hi, 0x7362;",
            f"shl.b32 ${out}, p, 16;", f"and.b32 ${out + 1}, p, 0xffff0000;",
            f"shl.b32 ${out + 2}, q, 16;", f"and.b32 ${out + 3}, q, 0xffff0000;"]


# $0..$7: the values of the codes at bit shifts 0..28; $8: the word; $9..$12: L0..L3; $13..$16: H0..H3.
DECODE_ASM = "\n".join(["{", ".reg .b32 s0, s1, t0, t1, la, lb, ha, hb, lo, hi, p, q;",
                        "and.b32 s0, $8, 0x77777777;",
                        "shr.u32 t0, $8, 1;", "and.b32 t0, t0, 0x44444444;", "or.b32 t0, t0, 0x32103210;",
                        "shr.u32 s1, s0, 16;", "shr.u32 t1, t0, 16;",
                        *_prmt_half("s0", "t0", 0), *_prmt_half("s1", "t1", 4), "}"])
DECODE_CONSTRAINTS = ",".join(["=r"] * 8 + ["r"] * 9)

# x beside a word's 8 codes: its 8 bfloat16 columns, 16 bytes, in one 128-bit load ($8: their address, 16-byte
# aligned), as float32 in nibble order ($i: column i ^ 1; column 2p is the low half of 32-bit pair p).
X_ASM = "\n".join(["{", ".reg .b32 a, b, c, d;", "ld.global.nc.v4.b32 {a, b, c, d}, [$8];",
                    *(f"and.b32 ${2 * p}, {r}, 0xffff0000;\nshl.b32 ${2 * p + 1}, {r}, 16;" for p, r in enumerate("abcd")),
                    "}"])
X_CONSTRAINTS = ",".join(["=r"] * 8 + ["l"])


if triton is not None:
    _ASM = tl.constexpr(DECODE_ASM)  # a jitted function reads globals only as constexpr
    _CONSTRAINTS = tl.constexpr(DECODE_CONSTRAINTS)
    _X = tl.constexpr(X_ASM)
    _LANE = tl.constexpr("{\n.reg .b32 t;\nmov.u32 t, %laneid;\nand.b32 t, t, $2;\nor.b32 $0, $1, t;\n}")
    _X_CONSTRAINTS = tl.constexpr(X_CONSTRAINTS)

    @triton.jit
    def x_columns(ptrs):
        """x at the 8 columns of the words whose first column's pair `ptrs` points to (int32 pairs of bfloat16),
        in nibble order, as float32 (CUDA only: inline PTX)."""
        f = tl.float32
        return tl.inline_asm_elementwise(_X, _X_CONSTRAINTS, [ptrs], dtype=(f, f, f, f, f, f, f, f), is_pure=True,
                                         pack=1)

    @triton.jit
    def _bf16_bits(code_ptr, i: tl.constexpr):
        # round to nearest even in integers: the same bits on the GPU and in the interpreter (whose own
        # float32 -> bfloat16 conversion does not round to nearest)
        u = tl.load(code_ptr + i).to(tl.uint32, bitcast=True)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).to(tl.int32)

    @triton.jit
    def _four(code_ptr, first: tl.constexpr, shift: tl.constexpr):
        """One table register: byte b = byte `shift // 8` of table entry first + b, as bfloat16."""
        r = (_bf16_bits(code_ptr, first) >> shift) & 0xFF
        r |= ((_bf16_bits(code_ptr, first + 1) >> shift) & 0xFF) << 8
        r |= ((_bf16_bits(code_ptr, first + 2) >> shift) & 0xFF) << 16
        return r | (((_bf16_bits(code_ptr, first + 3) >> shift) & 0xFF) << 24)

    @triton.jit
    def _per_thread(v, zero):
        # v | (%laneid & zero), with `zero` a run-time 0 ptxas cannot see through: the table then lives in 8
        # ordinary registers. Left uniform, ptxas keeps half of it in uniform registers, which prmt cannot
        # read, and copies it out again for every word.
        return tl.inline_asm_elementwise(_LANE, "=r,r,r", [v, zero], dtype=tl.int32, is_pure=True, pack=1)

    @triton.jit
    def table_bytes(code_ptr, zero=None, REGISTERS: tl.constexpr = False):
        """The 16-entry float32 table as bfloat16 low bytes L0..L3 and high bytes H0..H3 (8 int32 scalars);
        with REGISTERS (CUDA only; `zero`: any run-time value that is 0) held in per-thread registers."""
        t = (_four(code_ptr, 0, 0), _four(code_ptr, 4, 0), _four(code_ptr, 8, 0), _four(code_ptr, 12, 0),
             _four(code_ptr, 0, 8), _four(code_ptr, 4, 8), _four(code_ptr, 8, 8), _four(code_ptr, 12, 8))
        if REGISTERS:
            return (_per_thread(t[0], zero), _per_thread(t[1], zero), _per_thread(t[2], zero),
                    _per_thread(t[3], zero), _per_thread(t[4], zero), _per_thread(t[5], zero),
                    _per_thread(t[6], zero), _per_thread(t[7], zero))
        return t

    @triton.jit
    def decode_prmt(words, l0, l1, l2, l3, h0, h1, h2, h3):
        """The 8 codes of each int32 word through the register table (CUDA only: inline PTX)."""
        f = tl.float32
        return tl.inline_asm_elementwise(_ASM, _CONSTRAINTS, [words, l0, l1, l2, l3, h0, h1, h2, h3],
                                         dtype=(f, f, f, f, f, f, f, f), is_pure=True, pack=1)

    @triton.jit
    def scales(absmax_ptr, absq_ptr, abs2_ptr, code2_ptr, offset_ptr, idx, BLOCK2: tl.constexpr,
               NESTED: tl.constexpr):
        """The absmax of blocks `idx`, dequantized from its uint8 code once per block with double quant."""
        if NESTED:
            q = tl.load(absq_ptr + idx).to(tl.int32)
            return tl.load(code2_ptr + q) * tl.load(abs2_ptr + idx // BLOCK2) + tl.load(offset_ptr)
        return tl.load(absmax_ptr + idx)

    @triton.jit
    def decode_lut(words, code_ptr):
        """The 8 codes of each int32 word gathered from the float32 table (exact; runs in the interpreter)."""
        u = words.to(tl.uint32, bitcast=True)  # logical shifts
        return (tl.load(code_ptr + (u & 15)), tl.load(code_ptr + ((u >> 4) & 15)),
                tl.load(code_ptr + ((u >> 8) & 15)), tl.load(code_ptr + ((u >> 12) & 15)),
                tl.load(code_ptr + ((u >> 16) & 15)), tl.load(code_ptr + ((u >> 20) & 15)),
                tl.load(code_ptr + ((u >> 24) & 15)), tl.load(code_ptr + (u >> 28)))
