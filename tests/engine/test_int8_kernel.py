"""The fused LLM.int8 kernels (lab.engine.kernels.int8_mm) against bitsandbytes' own arithmetic.

On a CPU they run under Triton's interpreter in a separate process (this file run as a script), for the reason
test_nf4_kernel.py gives: the interpreter is chosen before triton is imported. The reference is bitsandbytes'
`Linear8bitLt.forward` on the CPU (the same operators as on CUDA), and that arithmetic redone in float64 with no
rounding in between. The kernels are also compiled for sm_90 here (Triton's own ptxas) and, with -m gpu, run at
Qwen2.5-7B's layer shapes against bitsandbytes on the GPU.
"""

import os
import sys

if __name__ == "__main__":  # the interpreter's process: before anything imports triton
    os.environ["TRITON_INTERPRET"] = "1"

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def interpreted():
    from tests.engine.interpreter import run_interpreted

    return run_interpreted(__file__, "LAB_KERNELS", timeout=600)


@needs_triton
def test_products_match_bitsandbytes(interpreted):
    products = interpreted["products"]
    for p in products:
        assert p["shape"] == [p["rows"], p["n"]] and p["dtype"] == "torch.float16", p
        assert p["vs_bnb"] <= 1e-3, p  # within float16 rounding of Linear8bitLt's own output
        assert p["vs_exact"] <= 1.0, p  # one rounding of the exact arithmetic (and float32 sums)
        assert p["seen"] == p["outlier_columns"], p
    rows = {p["rows"] for p in products}
    assert rows >= {1, 3, 17, 40} and any(p["outlier_columns"] for p in products)
    assert any(p["split"] for p in products) and any(not p["bias"] for p in products)


@needs_triton
def test_outlier_columns_do_count(interpreted):
    """Leaving out the 16-bit half, or quantizing the outliers with the rest, is visibly wrong: the checks above
    can fail."""
    d = interpreted["dropped"]
    assert d["without_outliers"] > 1e-2 and d["outliers_quantized"] > 1e-2


@needs_triton
def test_a_zero_row_gives_the_bias(interpreted):
    z = interpreted["zero_row"]
    assert z["finite"] and z["vs_bias"] == 0.0


@needs_triton
def test_int8_linear_routes_decode_rows_by_lab_kernels(interpreted):
    r = interpreted["routing"]
    assert r["bnb"]["calls"] == [] and r["lab"]["calls"] == [1, 12], \
        "decode rows and short prompts through the kernels, the 80-token prompt through bitsandbytes' operators"
    assert r["lab"]["vs_bnb"] <= 1e-3 and r["compiled"] <= 1e-3
    assert r["seen"] == 2


@needs_triton
def test_supports_names_what_it_cannot_read(interpreted):
    r = interpreted["reasons"]
    assert r["ok"] is None and "64 rows" in r["rows"] and "int8" in r["float_weight"] and "scales" in r["scales"]


@needs_triton
def test_int8_decode_step_with_the_kernels_matches_the_plain_int8_forward(interpreted):
    d = interpreted["decode"]
    assert d["outliers_seen"] > 0 and d["max_diff"] <= 2e-3 * d["top"], d
    assert d["same_argmax"] >= 0.9, d


@needs_triton
def test_kernels_compile_for_sm90_without_a_gpu():
    """Triton's own ptxas builds both kernels for an H100/H200 here: no spills, the weights copied 128 bits at a
    time, and the product on the tensor cores: the int8 dot (IMMA, or Hopper's IGMMA at 64 rows) and the outlier
    steps' float16 dot."""
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("Triton's NVIDIA backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json; from tests.engine.test_int8_kernel import compile_sm90\n"
            "from lab.engine.kernels import int8_mm as m\n"
            "print(json.dumps({r: compile_sm90(r, t) for r, t in ((1, m.DEFAULT), (16, m.DEFAULT),"
            " (64, m.DEFAULT_WIDE))}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rows, c in json.loads(proc.stdout).items():
        assert c["spilled"] == 0 and c["scan_spilled"] == 0, (rows, c)
        assert c["int8_mma"] > 0 and c["fp16_mma"] > 0, (rows, c)
        assert c["wide_weight_copies"] > 0, (rows, c)
        assert c["registers"] <= 255, (rows, c)


def compile_sm90(rows: int, tile) -> dict:
    """The product kernel and the scan as a launch with `rows` rows and `tile` would compile them, for sm_90."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lab.engine.kernels import int8_mm, nf4_sass

    names = ("x_ptr", "w_ptr", "scb_ptr", "stats_ptr", "flag_ptr", "bias_ptr", "out_ptr", "part_ptr", "seen_ptr",
             "R", "N", "K", "stride_x", "per")
    types = ["*fp16", "*i8", "*fp32", "*fp32", "*i8", "*fp16", "*fp16", "*fp32", "*i64"] + ["i32"] * 5
    consts = {"HAS_BIAS": True, "PARTS": True, "BR": max(16, triton.next_power_of_2(rows)), "BN": tile.bn,
              "BK": tile.bk, "IEEE": False}
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(names)
               if name.endswith("_ptr") or name in ("K", "stride_x", "per")}
    scan = {"x_ptr": "*fp16", "stats_ptr": "*fp32", "flag_ptr": "*i8", "R": "i32", "K": "i32", "stride_x": "i32",
            "threshold": "fp32"}
    out = {}
    for fn, sig, cst, attrs, key in (
            (int8_mm.int8_mm, dict(zip(names, types)), consts, aligned, ""),
            (int8_mm.int8_scan, scan, {"BR": triton.next_power_of_2(rows), "BK": int8_mm.SCAN_COLUMNS},
             {(i,): [["tt.divisibility", 16]] for i in range(3)}, "scan_")):
        src = ASTSource(fn=fn, signature=sig | {k: "constexpr" for k in cst}, constexprs=cst, attrs=attrs)
        c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": tile.warps})
        usage = nf4_sass._tool("cuobjdump", c.asm["cubin"], "-res-usage")
        regs, stack, local = (int(re.search(rf"{k}:(\d+)", usage).group(1)) for k in ("REG", "STACK", "LOCAL"))
        out[key + "registers"], out[key + "spilled"] = regs, stack + local
        if not key:
            loop = nf4_sass._longest_loop(nf4_sass._tool("nvdisasm", c.asm["cubin"], "-c"))
            out["int8_mma"] = sum(v for op, v in loop.items() if op.startswith(("IMMA", "IGMMA")))
            out["fp16_mma"] = sum(v for op, v in loop.items() if op.startswith(("HMMA", "HGMMA")))
            out["wide_weight_copies"] = sum(v for op, v in loop.items() if op.startswith("LDG") and "128" in op)
    return out


# ---- on the GPU: python -m pytest -m gpu tests/engine/test_int8_kernel.py ---------------------------------
SHAPES_7B = [(512, 3584), (3584, 3584), (3584, 18944), (18944, 3584), (4608, 3584), (37888, 3584)]


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", SHAPES_7B)
def test_7b_shapes_against_bitsandbytes_on_gpu(n, k):
    """1-64 rows with 0-24 planted outlier columns, K split or not, tuned and captured: within float16 rounding
    of Linear8bitLt's own forward."""
    from lab.engine.kernels import int8_mm

    layer = _layer(k, n, device="cuda")
    cb, scb = layer.state.CB, layer.state.SCB
    for rows, cols, tile in ((1, 0, None), (1, 3, int8_mm.Tile(64, 256, 4)), (4, 8, int8_mm.Tile(128, 128, 0)),
                             (8, 24, None), (16, 5, int8_mm.Tile(32, 256, 8)), (64, 2, None)):
        x = _inputs(rows, k, cols, device="cuda")
        seen = torch.zeros((), dtype=torch.long, device="cuda")
        with torch.inference_mode():
            want = layer(x).float()
            got = int8_mm.int8_matmul(x, cb, scb, layer.bias, 6.0, seen, tile=tile).float()
        where = (n, k, rows, cols, str(tile))
        assert (got - want).abs().max() <= 1e-3 * want.abs().max(), where
        assert int(seen) == cols, where
    x = _inputs(1, k, 4, device="cuda")
    seen = torch.zeros((), dtype=torch.long, device="cuda")
    with torch.inference_mode():
        tuned = int8_mm.int8_matmul(x, cb, scb, layer.bias, 6.0, seen)
        graph, out = torch.cuda.CUDAGraph(), torch.empty_like(tuned)
        with torch.cuda.graph(graph):
            out.copy_(int8_mm.int8_matmul(x, cb, scb, layer.bias, 6.0, seen))
        graph.replay()
        torch.cuda.synchronize()
    assert torch.equal(out, tuned)


# ---- the interpreter's process: python tests/engine/test_int8_kernel.py prints its results as JSON --------


def _layer(n_in: int, n_out: int, bias: bool = True, seed: int = 0, device: str = "cpu", threshold: float = 6.0):
    torch.manual_seed(seed)
    plain = torch.nn.Linear(n_in, n_out, bias=bias).half()
    layer = bnb.nn.Linear8bitLt(n_in, n_out, bias=bias, has_fp16_weights=False, threshold=threshold)
    layer.load_state_dict(plain.state_dict())
    layer = layer.to(device).eval()  # quantizes the weight rows
    layer.init_8bit_state()
    return layer


def _inputs(rows: int, k: int, cols: int, seed: int = 1, device: str = "cpu") -> torch.Tensor:
    """Random fp16 rows with `cols` outlier columns, each holding a value past the threshold in one row only (the
    other rows' values there still go the 16-bit way)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g)
    for i, c in enumerate(torch.randperm(k, generator=g)[:cols].tolist()):
        x[i % rows, c] = (7.0 + 3 * i) * (-1) ** i
    return x.half().to(device)


def _exact(layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' LLM.int8 arithmetic in float64 with no rounding in between, and the sum of its terms' sizes
    (what float32 accumulation errs by a multiple of)."""
    cb, scb = layer.state.CB.double(), layer.state.SCB.double()
    a = x.double()
    big = a.abs() >= layer.state.threshold
    cols = big.any(dim=0)
    row_max = a.masked_fill(big, 0).abs().amax(dim=1, keepdim=True)
    q = torch.round(x.float() * (127.0 / row_max.float())).double().masked_fill(cols, 0)  # fp32, as its quantizer
    xo = a.masked_fill(~cols, 0)
    dequant, per_code = 6.200124e-05, 7.874015718698502e-3  # bitsandbytes' constants (the first is 1.8e-5 above 1/127^2)
    y = (q @ cb.T) * row_max * scb * dequant + xo @ (cb * scb[:, None] * per_code).T
    size = (q.abs() @ cb.abs().T) * row_max * scb * dequant + xo.abs() @ (cb.abs() * scb[:, None] * per_code).T
    return (y + layer.bias.double() if layer.bias is not None else y), size


def _products() -> list[dict]:
    cases = [(96, 64, 1, 0, True, None), (96, 64, 1, 2, True, None), (50, 200, 3, 3, True, None),
             (64, 320, 17, 5, False, None), (32, 1024, 40, 6, True, int8_mm.Tile(32, 64, 4)),
             (48, 1024, 2, 4, True, int8_mm.Tile(32, 128, 2))]
    out = []
    for i, (n, k, rows, cols, bias, tile) in enumerate(cases):
        layer = _layer(k, n, bias=bias, seed=i)
        x = _inputs(rows, k, cols, seed=i)
        seen = torch.zeros((), dtype=torch.long)
        with torch.no_grad():
            want = layer(x)
            got = int8_mm.int8_matmul(x, layer.state.CB, layer.state.SCB, layer.bias, 6.0, seen, tile=tile)
        exact, size = _exact(layer, x)
        # half an ulp of the answer in float16, and float32's accumulation error (a few eps of the terms' sizes)
        bound = torch.finfo(torch.float16).eps * exact.abs().clamp(min=2.0**-14) / 2 + 2.0**-20 * size
        out.append({"n": n, "k": k, "rows": rows, "bias": bias, "split": bool(tile and tile.split > 1),
                    "shape": list(got.shape), "dtype": str(got.dtype), "outlier_columns": cols, "seen": int(seen),
                    "vs_bnb": ((got.float() - want.float()).abs().max() / want.float().abs().max()).item(),
                    "vs_exact": ((got.double() - exact).abs() / bound).max().item()})
    return out


def _dropped() -> dict:
    layer = _layer(128, 64, seed=5)
    x = _inputs(2, 128, 4, seed=5)
    with torch.no_grad():
        want = layer(x).float()
    top = want.abs().max()
    plain = x.float() @ (layer.state.CB.float() * layer.state.SCB[:, None] / 127).T + layer.bias.float()
    big = x.abs() >= 6.0
    row_max = x.float().masked_fill(big, 0).abs().amax(dim=1, keepdim=True)
    q = torch.round(x.float() * 127 / row_max).clamp(-127, 127)
    quantized = (q @ layer.state.CB.float().T) * row_max * layer.state.SCB / 127**2 + layer.bias.float()
    cols = big.any(dim=0)
    without = (q.masked_fill(cols, 0) @ layer.state.CB.float().T) * row_max * layer.state.SCB / 127**2 \
        + layer.bias.float()
    assert (plain - want).abs().max() <= 0.1 * top  # the references are the product at all
    return {"without_outliers": ((without - want).abs().max() / top).item(),
            "outliers_quantized": ((quantized - want).abs().max() / top).item()}


def _zero_row() -> dict:
    layer = _layer(64, 32, seed=3)
    x = torch.zeros(2, 64, dtype=torch.float16)
    x[1] = torch.randn(64).half()
    y = int8_mm.int8_matmul(x, layer.state.CB, layer.state.SCB, layer.bias, 6.0, torch.zeros((), dtype=torch.long))
    return {"finite": bool(torch.isfinite(y).all()), "vs_bias": (y[0].float() - layer.bias.float()).abs().max().item()}


def _routing() -> dict:
    from lab.engine.kernels.int8 import Int8Linear

    calls = []
    kernel = int8_mm.int8_matmul
    int8_mm.int8_matmul = lambda x, *a, **k: calls.append(x.shape[0]) or kernel(x, *a, **k)
    layer = _layer(128, 64, seed=4)
    seen = {}
    for value in ("bnb", "lab"):
        os.environ["LAB_KERNELS"] = value
        calls.clear()
        count = torch.zeros((), dtype=torch.long)
        lin = Int8Linear.of([layer], count)
        x = _inputs(1, 128, 2, seed=4)
        with torch.inference_mode():
            one = lin(x.view(1, 1, 128))
            lin(torch.randn(1, 12, 128).half())
            lin(torch.randn(1, 80, 128).half())
            want = layer(x)
        seen[value] = {"calls": list(calls), "vs_bnb": ((one[0].float() - want.float()).abs().max()
                                                        / want.float().abs().max()).item()}
        seen["seen"] = int(count)
    int8_mm.int8_matmul = kernel
    lin = Int8Linear.of([layer], torch.zeros((), dtype=torch.long))
    x = _inputs(1, 128, 2, seed=6).view(1, 1, 128)
    with torch.inference_mode():
        compiled = torch.compile(lambda t: lin(t), backend="aot_eager", fullgraph=True)(x)
        seen["compiled"] = ((compiled.float() - layer(x).float()).abs().max() / layer(x).float().abs().max()).item()
    os.environ.pop("LAB_KERNELS")
    return seen


def _reasons() -> dict:
    layer = _layer(128, 64)
    cb, scb = layer.state.CB, layer.state.SCB
    x = torch.randn(1, 128).half()
    return {"ok": int8_mm.supports(cb, scb, x), "rows": int8_mm.supports(cb, scb, torch.randn(65, 128).half()),
            "float_weight": int8_mm.supports(cb.float(), scb, x), "scales": int8_mm.supports(cb, scb.half(), x)}


def _decode() -> dict:
    """tiny-random's decode step with every product an LLM.int8 layer, through the kernels, against the plain int8
    forward pass (as tests/engine/test_int8.py checks the bitsandbytes-operator path)."""
    from lab.engine.decoder import StaticDecoder
    from lab.engine.kernels.int8 import counters
    from lab.models import load_model
    from tests.engine.test_decoder import teacher_forced
    from tests.engine.test_int8 import int8_model

    tiny = load_model("tiny-random")
    model = int8_model(tiny, threshold=0.5)
    prompt = tiny.encode(tiny.render([{"role": "user", "content": "Name three rivers."}]))
    forced = tiny.encode(" The Nile, the Amazon and the Yangtze 长江.")[:8]
    os.environ["LAB_KERNELS"] = "lab"
    dec = StaticDecoder(model, batch=1, max_len=128, graphs=False)
    got = teacher_forced(dec, [prompt], [forced])[0]
    os.environ.pop("LAB_KERNELS")
    with torch.inference_mode():
        want = model(torch.tensor([prompt + forced])).logits[0, len(prompt) - 1:-1].float()
    return {"outliers_seen": int(counters(model)[0]), "max_diff": (got - want).abs().max().item(),
            "top": want.abs().max().item(), "same_argmax": (got.argmax(-1) == want.argmax(-1)).float().mean().item()}


def _main() -> None:
    print(json.dumps({"products": _products(), "dropped": _dropped(), "zero_row": _zero_row(),
                      "routing": _routing(), "reasons": _reasons(), "decode": _decode()}))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from lab.engine.kernels import int8_mm

    _main()
