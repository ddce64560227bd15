"""The NF4 kernel compiled for a GPU that is not here: Triton's own ptxas turns it into sm_90 machine code on a
CPU-only machine, and this reads what came out (registers, spills, shared memory, the inner loop's
instructions). CI uses it to know the inline PTX assembles and the loop stays in registers before a GPU runs it.

    python -m lab.engine.kernels.nf4_sass [--rows 1] [--warps 4] [--nb 4] [--lut] [--plain] [--sass]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import subprocess

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lab.engine.kernels import nf4, nf4_mma

_ARGS = ("x_ptr", "w_ptr", "absmax_ptr", "absq_ptr", "abs2_ptr", "code2_ptr", "offset_ptr", "code_ptr", "bias_ptr",
         "out_ptr", "part_ptr", "N", "KB", "row_words", "stride_x", "blocks_per_split")


@dataclasses.dataclass
class Compiled:
    ptx: str
    sass: str
    registers: int
    spilled: int  # bytes of local memory per thread (spills)
    shared: int
    loop: collections.Counter  # SASS opcodes (with modifiers) of the longest loop
    conversions_in_loop: int  # ttg.convert_layout ops inside the scf.for (shared-memory shuffles)


def compile_sm90(tile: nf4.Tile = nf4.DEFAULT, rows: int = 1, nested: bool = True, prmt: bool = True,
                 x_pairs: bool = True, split: int = 1, bias: bool = False) -> Compiled:
    """Compile the kernel a launch with these flags would run (nf4_gemv, or nf4_mma for an mma tile), for sm_90
    (H100/H200)."""
    flags = {"NESTED": nested, "BLOCK2": 256, "HAS_BIAS": bias, "PARTS": split > 1, "BN": tile.bn, "PRMT": prmt}
    if tile.mma:
        fn, names = nf4_mma.nf4_mma, _ARGS[:11] + ("R",) + _ARGS[11:]
        types = ["*bf16", "*i32", "*fp32", "*u8", "*fp32", "*fp32", "*fp32", "*fp32", "*bf16", "*bf16", "*fp32"] \
            + ["i32"] * 6
        consts = flags | {"BR": max(16, triton.next_power_of_2(rows)), "IEEE": False}
    else:
        fn, names = nf4.nf4_gemv, _ARGS
        types = ["*i32" if x_pairs else "*bf16", "*i32", "*fp32", "*u8", "*fp32", "*fp32", "*fp32", "*fp32",
                 "*bf16", "*bf16", "*fp32", "i32", "i32", "i32", "i32", "i32"]
        consts = flags | {"ROWS": rows, "NB": tile.nb, "X_PAIRS": x_pairs, "X_ASM": x_pairs and prmt}
    signature = dict(zip(names, types)) | {k: "constexpr" for k in consts}
    # what Triton's launcher infers for real tensors: 16-byte aligned pointers, row_words/stride_x % 16 == 0
    aligned = [i for i, name in enumerate(names) if name.endswith("_ptr") or name in ("row_words", "stride_x")]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": tile.warps})
    sass, usage = _tool("nvdisasm", c.asm["cubin"], "-c"), _tool("cuobjdump", c.asm["cubin"], "-res-usage")
    regs, local = (int(re.search(rf"{k}:(\d+)", usage).group(1)) for k in ("REG", "LOCAL"))
    ttgir = c.asm["ttgir"]
    loop_ir = ttgir[ttgir.find("scf.for"):ttgir.find("scf.yield")]
    return Compiled(ptx=c.asm["ptx"], sass=sass, registers=regs, spilled=local, shared=c.metadata.shared,
                    loop=_longest_loop(sass), conversions_in_loop=loop_ir.count("ttg.convert_layout"))


def _tool(name: str, cubin: bytes, *flags: str) -> str:
    """Run one of the CUDA binary tools that ship inside Triton's wheel on a cubin."""
    import tempfile

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, *flags, f.name], capture_output=True, text=True, check=True).stdout


def _longest_loop(sass: str) -> collections.Counter:
    lines = sass.splitlines()
    labels = {m.group(1): i for i, ln in enumerate(lines) if (m := re.match(r"\s*(\.L_x_\d+):", ln))}
    best = (0, 0)
    for i, ln in enumerate(lines):
        m = re.search(r"BRA `\((\.L_x_\d+)\)", ln)
        if m and labels.get(m.group(1), i) < i and i - labels[m.group(1)] > best[1] - best[0]:
            best = (labels[m.group(1)], i)
    ops = collections.Counter()
    for ln in lines[best[0]:best[1] + 1]:
        if m := re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", ln):
            ops[m.group(1)] += 1
    return ops


def summary(c: Compiled, tile: nf4.Tile, rows: int) -> str:
    words = tile.bn * tile.nb * 8 / (tile.warps * 32)  # per thread per loop step
    total = sum(c.loop.values())
    top = ", ".join(f"{op} {k}" for op, k in c.loop.most_common(12))
    return (f"{tile} rows {rows}: {c.registers} registers, {c.spilled} B spilled, {c.shared} B shared; loop "
            f"{total} instructions for {words:g} words x {rows} rows ({total / (words * 8):.2f} per code), "
            f"{c.conversions_in_loop} layout conversions in it; {top}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--warps", type=int, default=nf4.DEFAULT.warps)
    p.add_argument("--nb", type=int, default=nf4.DEFAULT.nb)
    p.add_argument("--mma", type=int, default=0, help="weight rows a program of the tensor-core kernel (0: nf4_gemv)")
    p.add_argument("--lut", action="store_true", help="the gather decode instead of the register table")
    p.add_argument("--plain", action="store_true", help="no double quant")
    p.add_argument("--sass", action="store_true", help="print the whole SASS")
    a = p.parse_args()
    tile = nf4.Tile(a.warps, a.nb, 0, a.mma)
    c = compile_sm90(tile, a.rows, nested=not a.plain, prmt=not a.lut)
    print(c.sass if a.sass else summary(c, tile, a.rows))


if __name__ == "__main__":
    main()
