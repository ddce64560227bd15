"""The NF4 kernel's register-table decode (lab.engine.kernels.nf4_decode.DECODE_ASM) run on the CPU.

The PTX cannot run here (CI has no GPU and Triton's interpreter refuses inline assembly), so a small numpy
model of the few instructions it uses executes the very text the kernel hands to the compiler: prmt.b32 in
its default mode (bit 3 of each selector nibble replicates the chosen byte's sign), and/or/shl/shr.
Every code in every position of a word, and random words, must decode to the table rounded to bfloat16."""

import re

import numpy as np
import pytest

from lab.engine.kernels.nf4_decode import DECODE_ASM, X_ASM

# bitsandbytes' NF4 table (bitsandbytes.functional.get_4bit_type("nf4")), as float32
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)
M32 = np.uint64(0xFFFFFFFF)


def prmt(a, b, c):
    """PTX prmt.b32 d, a, b, c (no mode): byte k of d is byte (c >> 4k) & 7 of the 8 bytes {b:a}, or with bit 3
    of that nibble set, the chosen byte's top bit copied into all 8 bits."""
    a, b, c = (np.asarray(v, dtype=np.uint64) for v in np.broadcast_arrays(a, b, c))
    pair = (b << np.uint64(32)) | a
    d = np.zeros(a.shape, dtype=np.uint64)
    for k in range(4):
        sel = (c >> np.uint64(4 * k)) & np.uint64(15)
        byte = (pair >> (np.uint64(8) * (sel & np.uint64(7)))) & np.uint64(0xFF)
        byte = np.where(sel & np.uint64(8), np.where(byte & np.uint64(0x80), np.uint64(0xFF), np.uint64(0)), byte)
        d |= byte << np.uint64(8 * k)
    return d & M32


OPS = {"and.b32": lambda a, b: a & b, "or.b32": lambda a, b: a | b,
       "shl.b32": lambda a, b: (a << b) & M32, "shr.u32": lambda a, b: a >> b}


def run_ptx(asm: str, inputs: dict[int, np.ndarray], memory: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """Execute `asm` over arrays: `inputs` maps operand numbers ($8 ...) to uint32 values (byte addresses into
    `memory`, uint32 words, for loads); returns every $n written. Refuses any instruction it does not model, so
    the model cannot silently skip one."""
    regs: dict[str, np.ndarray] = {f"${i}": v.astype(np.uint64) for i, v in inputs.items()}

    def val(tok: str) -> np.ndarray:
        if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", tok):
            return np.uint64(int(tok, 0))
        assert tok in regs, f"{tok} read before it is written"
        return regs[tok]

    for line in asm.splitlines():
        line = line.split("//")[0].strip()
        if line in ("{", "}", "") or line.startswith(".reg"):
            continue
        m = re.fullmatch(r"([a-z0-9.]+)\s+(.+);", line)
        assert m, f"cannot parse {line!r}"
        op, args = m.group(1), [t.strip() for t in m.group(2).split(",")]
        if op == "ld.global.nc.v4.b32":  # {a, b, c, d}, [addr]: 4 consecutive words at a 16-byte aligned address
            m = re.fullmatch(r"\{(.+)\},\s*\[(\S+)\]", m.group(2).strip())
            dst, addr = [t.strip() for t in m.group(1).split(",")], val(m.group(2))
            assert (addr % 16 == 0).all(), "ld.v4 needs a 16-byte aligned address"
            for i, d in enumerate(dst):
                regs[d] = memory[(addr // 4 + i).astype(np.int64)].astype(np.uint64)
        elif op == "prmt.b32":
            regs[args[0]] = prmt(val(args[1]), val(args[2]), val(args[3]))
        else:
            assert op in OPS, f"the model has no {op}"
            regs[args[0]] = OPS[op](val(args[1]), val(args[2]))
    return {int(k[1:]): v.astype(np.uint32) for k, v in regs.items() if k.startswith("$") and int(k[1:]) not in inputs}


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (what Triton's .to(tl.bfloat16) does)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)).astype(np.uint32)


def table_registers(table: np.ndarray) -> dict[int, np.ndarray]:
    """$9..$12 = low bytes L0..L3, $13..$16 = high bytes H0..H3 of the bfloat16 table (nf4_decode.table_bytes)."""
    bits = bf16_bits(table).astype(np.uint64)
    regs = {}
    for half, first in ((0, 9), (8, 13)):
        for j in range(4):
            regs[first + j] = np.uint64(sum(int((bits[4 * j + b] >> np.uint64(half)) & np.uint64(0xFF)) << (8 * b)
                                            for b in range(4)))
    return regs


def decode(words: np.ndarray, table: np.ndarray = NF4, asm: str = DECODE_ASM) -> np.ndarray:
    """[len(words), 8] float32: output $k of the PTX for every word."""
    out = run_ptx(asm, {8: words.astype(np.uint32), **table_registers(table)})
    assert sorted(out) == list(range(8)), f"the PTX writes {sorted(out)}, not $0..$7"
    return np.stack([np.broadcast_to(out[k], words.shape) for k in range(8)], axis=-1).view(np.float32)


def codes_of(words: np.ndarray) -> np.ndarray:
    return (words[:, None] >> (4 * np.arange(8, dtype=np.uint32))[None, :]) & 15


def want(words: np.ndarray, table: np.ndarray = NF4) -> np.ndarray:
    return (bf16_bits(table)[codes_of(words)] << 16).view(np.float32)


def test_prmt_model_follows_the_ptx_manual():
    a, b = np.array([0x33221100], np.uint32), np.array([0x77665544], np.uint32)
    assert prmt(a, b, np.uint32(0x3210))[0] == 0x33221100
    assert prmt(a, b, np.uint32(0x7654))[0] == 0x77665544
    assert prmt(a, b, np.uint32(0x0123))[0] == 0x00112233
    assert prmt(a, b, np.uint32(0x5140))[0] == 0x55114400
    # bit 3 replicates the top bit of the chosen byte (0x80 -> 0xff, 0x11 -> 0x00); c's upper 16 bits are unused
    a = np.array([0x11000080], np.uint32)
    assert prmt(a, b, np.uint32(0xFFFF3B88))[0] == 0x1100FFFF
    assert prmt(a, b, np.uint32(0x0000000B))[0] == 0x80808000


def test_every_code_in_every_position():
    rng = np.random.default_rng(0)
    for pos in range(8):
        for code in range(16):
            others = rng.integers(0, 2**32, size=64, dtype=np.uint64).astype(np.uint32)
            words = (others & np.uint32(~(15 << (4 * pos)) & 0xFFFFFFFF)) | np.uint32(code << (4 * pos))
            got = decode(words)
            assert (got[:, pos].view(np.uint32) == np.uint32(bf16_bits(NF4[code:code + 1])[0] << 16)).all(), (pos, code)
            assert np.array_equal(got.view(np.uint32), want(words).view(np.uint32)), (pos, code)
    same = np.array([int(f"{c:x}" * 8, 16) for c in range(16)], dtype=np.uint32)  # 0x00000000 .. 0xffffffff
    assert np.array_equal(decode(same).view(np.uint32), want(same).view(np.uint32))


def test_random_words_and_an_arbitrary_table():
    rng = np.random.default_rng(1)
    words = rng.integers(0, 2**32, size=100_000, dtype=np.uint64).astype(np.uint32)
    assert np.array_equal(decode(words).view(np.uint32), want(words).view(np.uint32))
    table = np.sort(rng.standard_normal(16).astype(np.float32)) * 7  # any 16 values, signs and exponents mixed
    assert np.array_equal(decode(words, table).view(np.uint32), want(words, table).view(np.uint32))


def test_bfloat16_table_is_within_two_to_minus_eight():
    rounded = (bf16_bits(NF4) << 16).view(np.float32)
    assert (np.abs(rounded - NF4) <= 2.0**-8 * np.abs(NF4)).all()  # half an ulp: 8 significant bits
    assert rounded[0] == -1 and rounded[7] == 0 and rounded[15] == 1


def test_the_selector_mask_is_what_makes_it_right():
    """Without `& 0x77777777` codes 8-15 hit prmt's sign-replicate bit: the model must see that fail."""
    broken = DECODE_ASM.replace("and.b32 s0, $8, 0x77777777;", "and.b32 s0, $8, 0xffffffff;")
    assert broken != DECODE_ASM
    words = np.array([0x88888888, 0xFEDCBA98], dtype=np.uint32)
    assert not np.array_equal(decode(words, asm=broken).view(np.uint32), want(words).view(np.uint32))


def test_instruction_count():
    body = [ln for ln in DECODE_ASM.splitlines() if ln.strip() and ln.strip() not in "{}" and not ln.startswith(".reg")]
    assert len(body) == 30, "the module docstring says 30 instructions per word"
    assert sum(ln.startswith("prmt") for ln in body) == 16


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_bf16_rounding_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).standard_normal(10_000).astype(np.float32)
    ref = torch.from_numpy(x).to(getattr(torch, dtype)).view(torch.int16).numpy().view(np.uint16).astype(np.uint32)
    assert np.array_equal(bf16_bits(x), ref)


def test_x_columns_in_nibble_order():
    """X_ASM: one 128-bit load of a word's 8 bfloat16 columns, as float32 in the order of the word's nibbles
    (nibble i is column i ^ 1: the high nibble of each byte comes first)."""
    x = np.random.default_rng(3).standard_normal(64 * 8).astype(np.float32)
    bits = bf16_bits(x).astype(np.uint32)
    memory = bits[0::2] | (bits[1::2] << 16)  # two columns a 32-bit word, little-endian: column 2p low
    words = np.arange(64)
    out = run_ptx(X_ASM, {8: (words * 16).astype(np.uint32)}, memory)
    assert sorted(out) == list(range(8))
    got = np.stack([out[i] for i in range(8)], axis=-1).view(np.float32)
    want = (bits[(words[:, None] * 8 + (np.arange(8) ^ 1)[None, :])] << 16).view(np.float32)
    assert np.array_equal(got, want)


def test_nibble_i_is_column_i_xor_1():
    """bitsandbytes packs element 2i in a byte's HIGH nibble: the code at bit shift 4i of a little-endian int32
    word is column i ^ 1, which is what both decodes and both x readers assume."""
    codes = np.arange(8) % 16
    packed = np.array([(codes[2 * i] << 4) | codes[2 * i + 1] for i in range(4)], dtype=np.uint8)
    word = packed.view(np.uint32)[0]
    assert [(int(word) >> (4 * i)) & 15 for i in range(8)] == [codes[i ^ 1] for i in range(8)]
