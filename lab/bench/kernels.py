"""The NF4 decode kernel beside bitsandbytes' and beside bf16 cuBLAS, one product at a time, on CUDA.

    python -m lab.bench kernels [--out lab/bench/results]

Per Qwen2.5-7B layer shape (out x in) and input rows (1 and 4): the time of one product and the bytes it
reads per second for (a) lab.engine.kernels.nf4, (b) bitsandbytes' Linear4bit forward, (c) a bf16
`x @ W.T` of the same shape; then one decode step's products (28 layers x q, k, v, o, gate, up, down) for
each. Each time is 20 products captured in one CUDA graph, replayed and timed with CUDA events (launch
gaps removed, as DESIGN.md measures). Random weights, NF4 with double quant; `max rel diff` is the largest
|lab - bitsandbytes| over the largest |bitsandbytes| output.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SHAPES = {"q": (3584, 3584), "k": (512, 3584), "v": (512, 3584), "o": (3584, 3584), "gate": (18944, 3584),
          "up": (18944, 3584), "down": (3584, 18944)}
LAYERS = 28
PER_GRAPH = 20


def graph_time_ms(fn, replays: int) -> float:
    """Milliseconds per call of `fn`, PER_GRAPH calls captured in one graph (warmed up first, on a side stream)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(PER_GRAPH):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (replays * PER_GRAPH)


def nf4_module(n: int, k: int):
    import bitsandbytes as bnb

    lin = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.bfloat16, compress_statistics=True,
                            quant_type="nf4")
    w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
    lin.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=True, quant_type="nf4",
                                   blocksize=64)
    return lin.to("cuda")


def nf4_bytes(lin) -> int:
    qs = lin.weight.quant_state
    extra = qs.state2.absmax.numel() * 4 + qs.state2.code.numel() * 4 if qs.nested else 0
    return lin.weight.numel() + qs.absmax.numel() * qs.absmax.element_size() + extra


def measure(n: int, k: int, rows: int, replays: int) -> dict:
    from lab.engine.kernels import nf4

    lin = nf4_module(n, k)
    w16 = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
    x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
    reason = nf4.supports(lin, x)
    if reason:
        raise SystemExit(f"the lab kernel cannot run here: {reason}.")
    with torch.inference_mode():
        ours, theirs = nf4.nf4_matmul(x, lin).float(), lin(x).float()
        diff = ((ours - theirs).abs().max() / theirs.abs().max()).item()
        io = (rows * k + rows * n) * 2
        times = {"lab": graph_time_ms(lambda: nf4.nf4_matmul(x, lin), replays),
                 "bnb": graph_time_ms(lambda: lin(x), replays),
                 "bf16": graph_time_ms(lambda: x @ w16.T, replays)}
    moved = {"lab": nf4_bytes(lin) + io, "bnb": nf4_bytes(lin) + io, "bf16": n * k * 2 + io}
    row = {"shape": f"{n}x{k}", "rows": rows, "max_rel_diff": diff}
    for name, ms in times.items():
        row[f"{name}_us"] = ms * 1000
        row[f"{name}_gbs"] = moved[name] / (ms / 1000) / 1e9
    return row


def table(rows: list[dict], steps: dict) -> str:
    head = ("| shape (out x in) | rows | lab µs | lab GB/s | bnb µs | bnb GB/s | bf16 µs | bf16 GB/s "
            "| lab/bnb speed-up | max rel diff |\n|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(f"| {r['shape']} | {r['rows']} | {r['lab_us']:.1f} | {r['lab_gbs']:.0f} | {r['bnb_us']:.1f} | "
                   f"{r['bnb_gbs']:.0f} | {r['bf16_us']:.1f} | {r['bf16_gbs']:.0f} | {r['bnb_us'] / r['lab_us']:.2f}x |"
                   f" {r['max_rel_diff']:.1e} |\n" for r in rows)
    step = "".join(f"| {n} | {s['lab']:.3f} | {s['bnb']:.3f} | {s['bf16']:.3f} | {s['bnb'] / s['lab']:.2f}x | "
                   f"{s['bf16'] / s['lab']:.2f}x |\n" for n, s in steps.items())
    return (head + body + f"\nOne decode step's products ({LAYERS} layers x q, k, v, o, gate, up, down):\n\n"
            "| rows | lab ms | bnb ms | bf16 ms | lab vs bnb | lab vs bf16 |\n|---|---|---|---|---|---|\n" + step)


def run(args) -> int:
    if not torch.cuda.is_available():
        print("python -m lab.bench kernels needs a CUDA GPU; run it on the GPU machine.")
        return 2
    torch.manual_seed(0)
    unique = sorted(set(SHAPES.values()), key=lambda s: (s[0] * s[1], s))
    rows, steps = [], {}
    for n_rows in (1, 4):
        found = {}
        for shape in unique:
            found[shape] = measure(*shape, n_rows, args.replays)
            torch.cuda.empty_cache()  # the last shape's weights and graphs
        rows += list(found.values())
        steps[n_rows] = {name: LAYERS * sum(found[s][f"{name}_us"] for s in SHAPES.values()) / 1000
                         for name in ("lab", "bnb", "bf16")}
    props = torch.cuda.get_device_properties(0)
    import bitsandbytes
    import triton

    machine = (f"{props.name}, torch {torch.__version__}, triton {triton.__version__}, "
               f"bitsandbytes {bitsandbytes.__version__}")
    text = f"# NF4 kernels, {machine}\n\n{args.command_line}\n\n{table(rows, steps)}"
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "kernels.md").write_text(text)
        (out / "kernels.json").write_text(json.dumps({"machine": machine, "rows": rows, "steps": steps}, indent=1))
    return 0
