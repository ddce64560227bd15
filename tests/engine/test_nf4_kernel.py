"""The NF4 decode kernel (lab.engine.kernels.nf4) against bitsandbytes' own arithmetic.

On a CPU the kernel runs under Triton's interpreter in a separate process (this file run as a script): the
interpreter has to be chosen before triton is imported, and a pytest session may have imported it already.
The gpu-marked test runs the compiled kernel at Qwen2.5-7B's layer shapes against Linear4bit's forward."""

import os
import sys

if __name__ == "__main__":  # the interpreter's process (see the docstring): before anything imports triton
    os.environ["TRITON_INTERPRET"] = "1"

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")


@pytest.fixture(scope="module")
def interpreted():
    env = {k: v for k, v in os.environ.items() if k != "LAB_KERNELS"} | {"TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__))], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_triton
def test_products_match_bitsandbytes(interpreted):
    for p in interpreted["products"]:
        n, _, rows = p["case"][:3]
        assert p["shape"] == [rows, n] and p["dtype"] == "torch.bfloat16", p
        assert p["vs_bnb"] <= 1e-2, p  # the bound: 1% of the output's largest value
        assert p["fp32_vs_exact"] <= 1e-5, p  # float32 in, float32 W: the same sums up to rounding


@needs_triton
def test_nibble_order_and_blocks_from_known_codes(interpreted):
    assert interpreted["known"]["bnb_agrees"] == 0.0, "the hand-packed bytes do not mean what this test thinks"
    assert interpreted["known"]["kernel"] == 0.0


@needs_triton
def test_supports_names_what_it_cannot_read(interpreted):
    r = interpreted["reasons"]
    assert r["ok"] is None
    assert "8 rows" in r["rows"] and "blocksize 64" in r["blocksize"] and "fp4" in r["fp4"]
    assert "Linear4bit" in r["plain"]


@needs_triton
def test_linear_routes_decode_rows_by_lab_kernels(interpreted):
    r = interpreted["routing"]
    assert r["bnb"]["calls"] == [] and r["bnb"]["shape"] == [1, 1, 64]
    assert r["lab"]["calls"] == [1], "one decode row through the kernel, the 12-token prompt through bitsandbytes"
    assert r["lab"]["shape"] == [1, 1, 64]
    assert r["compiled"] == 0.0
    assert r["default"] == "bnb" and "LAB_KERNELS" in r["bad"]


@pytest.mark.gpu
def test_7b_shapes_against_linear4bit_forward_on_gpu():
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    from lab.engine.kernels import nf4

    shapes = [(3584, 3584), (512, 3584), (18944, 3584), (3584, 18944)]
    torch.manual_seed(0)
    for (n, k) in shapes:
        for dist in ("normal", "student-t"):
            w = torch.distributions.StudentT(3.0).sample((n, k)) if dist == "student-t" else torch.randn(n, k)
            lin = bnb.nn.Linear4bit(k, n, bias=True, compute_dtype=torch.bfloat16, quant_type="nf4")
            lin.weight = bnb.nn.Params4bit(w.to(torch.bfloat16), requires_grad=False, compress_statistics=True,
                                           quant_type="nf4", blocksize=64)
            lin = lin.to("cuda")
            lin.bias.data = torch.randn(n, device="cuda").to(torch.bfloat16)
            W = F.dequantize_4bit(lin.weight.data, lin.weight.quant_state).float()
            for rows in (1, 4, 8):
                x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
                assert nf4.supports(lin, x) is None
                with torch.inference_mode():
                    y = nf4.nf4_matmul(x, lin).float()
                    theirs = lin(x).float()
                ref = x.float() @ W.T + lin.bias.float()
                scale = ref.abs().max()
                assert (y - ref).abs().max() <= 1e-2 * scale, (n, k, rows, dist)
                assert (y - theirs).abs().max() <= 1e-2 * scale, (n, k, rows, dist)
                assert torch.equal(nf4.nf4_matmul(x, lin), nf4.nf4_matmul(x, lin)), "split K must be deterministic"


# ---- the interpreter's process: python tests/engine/test_nf4_kernel.py prints its results as JSON ----------


def _linear4bit(w: torch.Tensor, nested: bool, bias: bool = True, blocksize: int = 64, quant_type: str = "nf4"):
    n, k = w.shape
    lin = bnb.nn.Linear4bit(k, n, bias=bias, compute_dtype=torch.bfloat16, compress_statistics=nested,
                            quant_type=quant_type)
    lin.weight = bnb.nn.Params4bit(w.to(torch.bfloat16), requires_grad=False, compress_statistics=nested,
                                   quant_type=quant_type, blocksize=blocksize)
    lin = lin.to("cpu")  # bitsandbytes quantizes on the move
    if bias:
        lin.bias.data = torch.randn(n).to(torch.bfloat16)
    return lin


def _exact_weight(lin) -> torch.Tensor:
    """W in float32 from the packed bytes, bitsandbytes' own operator with a float32 absmax (its
    `dequantize_4bit` rounds W to the module's dtype, bfloat16 here)."""
    qs = lin.weight.quant_state
    absmax = qs.absmax
    if qs.nested:
        absmax = F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
    return torch.ops.bitsandbytes.dequantize_4bit.default(lin.weight.data, absmax.float(), qs.blocksize, "nf4",
                                                          qs.shape, torch.float32)


def _products() -> list[dict]:
    out = []
    cases = [(128, 256, 1, True, "normal"), (256, 512, 2, False, "normal"), (192, 320, 5, True, "student-t"),
             (128, 512, 8, False, "student-t"), (136, 256, 3, True, "normal")]
    for i, (n, k, rows, nested, dist) in enumerate(cases):
        torch.manual_seed(i)
        w = torch.distributions.StudentT(3.0).sample((n, k)) if dist == "student-t" else torch.randn(n, k)
        lin = _linear4bit(w, nested)
        x = torch.randn(rows, k, dtype=torch.bfloat16)
        y = nf4.nf4_matmul(x, lin).float()
        qs = lin.weight.quant_state
        bnb_ref = x.float() @ F.dequantize_4bit(lin.weight.data, qs).float().T + lin.bias.float()
        exact = x.float() @ _exact_weight(lin).T + lin.bias.float()
        y32 = nf4.nf4_matmul(x.float(), lin)
        out.append({"case": [n, k, rows, nested, dist], "dtype": str(nf4.nf4_matmul(x, lin).dtype),
                    "shape": list(y.shape), "vs_bnb": ((y - bnb_ref).abs().max() / bnb_ref.abs().max()).item(),
                    "fp32_vs_exact": ((y32 - exact).abs().max() / exact.abs().max()).item()})
    return out


def _known_codes() -> dict:
    """Bytes written by hand: W[n, k] = table[(n + 3k) % 16] * absmax, absmax 2 in every block; x = e_k
    reads column k back. Checks the nibble order and the block indexing without bitsandbytes' quantizer."""
    n, k = 32, 128
    lin = _linear4bit(torch.randn(n, k), nested=False, bias=False)
    qs = lin.weight.quant_state
    codes = (torch.arange(n)[:, None] + 3 * torch.arange(k)[None, :]) % 16
    flat = codes.reshape(-1).to(torch.uint8)
    lin.weight.data = ((flat[0::2] << 4) | flat[1::2]).reshape(-1, 1)
    qs.absmax = torch.full_like(qs.absmax, 2.0)
    want = qs.code[codes] * 2.0
    got = torch.stack([nf4.nf4_matmul(torch.eye(k)[c:c + 1], lin)[0] for c in range(k)], dim=1)
    return {"kernel": (got - want).abs().max().item(),
            "bnb_agrees": (_exact_weight(lin) - want).abs().max().item()}


def _reasons() -> dict:
    w = torch.randn(64, 128)
    x = torch.randn(1, 128)
    return {"ok": nf4.supports(_linear4bit(w, True), x),
            "rows": nf4.supports(_linear4bit(w, True), torch.randn(9, 128)),
            "blocksize": nf4.supports(_linear4bit(w, False, blocksize=128), x),
            "fp4": nf4.supports(_linear4bit(w, False, quant_type="fp4"), x),
            "plain": nf4.supports(torch.nn.Linear(128, 64), x)}


def _routing() -> dict:
    """Which calls of layers.linear/project_qkv/mlp reach the kernel under each LAB_KERNELS."""
    calls = []
    kernel = nf4.nf4_matmul
    nf4.nf4_matmul = lambda x, m: calls.append(x.shape[0]) or kernel(x, m)
    lin = _linear4bit(torch.randn(64, 128), True)
    seen = {}
    for value in ("bnb", "lab"):
        os.environ["LAB_KERNELS"] = value
        calls.clear()
        with torch.inference_mode():
            one = layers.linear(lin, torch.randn(1, 1, 128, dtype=torch.bfloat16))
            layers.linear(lin, torch.randn(1, 12, 128, dtype=torch.bfloat16))  # a prompt: bitsandbytes' forward
        seen[value] = {"calls": list(calls), "shape": list(one.shape)}
    nf4.nf4_matmul = kernel
    lin = _linear4bit(torch.randn(64, 128), True)  # compiled as the decode step is: no graph break
    x = torch.randn(1, 1, 128, dtype=torch.bfloat16)
    with torch.inference_mode():
        compiled = torch.compile(lambda t: layers.linear(lin, t), backend="aot_eager", fullgraph=True)(x)
        seen["compiled"] = (compiled.float() - kernel(x, lin).float()).abs().max().item()
    os.environ.pop("LAB_KERNELS")
    seen["default"] = nf4.kernels()
    os.environ["LAB_KERNELS"] = "fast"
    try:
        nf4.kernels()
        seen["bad"] = None
    except ValueError as e:
        seen["bad"] = str(e)
    return seen


def _main() -> None:
    print(json.dumps({"products": _products(), "known": _known_codes(), "reasons": _reasons(), "routing": _routing()}))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    from lab.engine import layers
    from lab.engine.kernels import nf4

    _main()
