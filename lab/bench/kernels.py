"""The NF4 decode kernel beside bitsandbytes' and beside bf16 cuBLAS, one product at a time, the fused LLM.int8
kernels beside the step's bitsandbytes operators, and the decode attention kernel beside the step's SDPA call,
on CUDA.

    python -m lab.bench kernels [--out lab/bench/results]
    LAB_KERNELS_CASES=nf4,int8,attention  which to run (default all three)
    LAB_KERNELS_ROWS=1,2,4,8   input rows to measure (default)
    LAB_KERNELS_SWEEP=1,4      also time a grid of tiles (warps, blocks a step, K split) at these rows, per shape
    LAB_KERNELS_BUDGET_S=200   stop sweeping this many seconds after the start (each result is printed as it comes)

Per Qwen2.5-7B layer shape (out x in) and input rows: the time of one product and the bytes it reads per
second for (a) lab.engine.kernels.nf4 as the engine runs it (its tile timed per shape, the register-table
decode), (b) bitsandbytes' Linear4bit forward, (c) a bf16 `x @ W.T` of the same shape; at 1 row also the
kernel with the gather decode (its fallback) on the same tile; then one decode step's products (28 layers x
q, k, v, o, gate, up, down) for each. Each time is 20 products captured in one CUDA graph, replayed and timed
with CUDA events (launch gaps removed, as DESIGN.md measures). Random weights, NF4 with double quant;
`max rel diff` is the largest |lab - bitsandbytes| over the largest |bitsandbytes| output.

Attention: the 7B's heads (4 key heads of 7 query heads, d 128, bf16), 1 and 8 rows, at each context in
ATTENTION_CONTEXTS with the cache sized as the engine sizes it; (a) F.scaled_dot_product_attention with the
step's boolean mask (over every slot), (b) lab.engine.kernels.attention.decode_attention (slots up to cur only).
GB/s counts the keys and values the answer needs, 2 x rows x 4 x (cur + 1) x 128 x 2 bytes, for both.

LLM.int8: the step's four products per layer (q/k/v fused, o, gate/up fused, down) with int8 weights quantized
by bitsandbytes from random fp16 ones, fp16 rows holding 4 outlier columns (|x| >= 6); (a) lab.engine.kernels.
int8_mm as the engine runs it with LAB_KERNELS=lab (tile timed per shape), (b) `Int8Linear` with bitsandbytes'
operators (the step's path by default), (c) an fp16 `x @ W.T`; GB/s counts the int8 weights and their scales.
`max rel diff` is |lab - Linear8bitLt.forward| over its largest output.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

SHAPES = {"q": (3584, 3584), "k": (512, 3584), "v": (512, 3584), "o": (3584, 3584), "gate": (18944, 3584),
          "up": (18944, 3584), "down": (3584, 18944)}
LAYERS = 28
PER_GRAPH = 20
CASES = ("nf4", "int8", "attention")
INT8_SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}
INT8_OUTLIERS = 4
ATTENTION_CONTEXTS = (512, 4096, 16384, 32000)
ATTENTION_ROWS = (1, 8)
N_KV, GROUP, HEAD_DIM = 4, 7, 128  # Qwen2.5-7B


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


def measure(lin, w16: torch.Tensor, rows: int, replays: int) -> dict:
    from lab.engine.kernels import nf4

    n, k = lin.weight.quant_state.shape
    x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
    reason = nf4.supports(lin, x)
    if reason:
        raise SystemExit(f"the lab kernel cannot run here: {reason}.")
    with torch.inference_mode():
        ours, theirs = nf4.nf4_matmul(x, lin).float(), lin(x).float()  # the first call times the tiles
        diff = ((ours - theirs).abs().max() / theirs.abs().max()).item()
        tile = nf4.chosen(x, lin)
        times = {"lab": graph_time_ms(lambda: nf4.nf4_matmul(x, lin), replays),
                 "bnb": graph_time_ms(lambda: lin(x), replays),
                 "bf16": graph_time_ms(lambda: x @ w16.T, replays)}
        if rows == 1:
            times["gather"] = graph_time_ms(lambda: nf4.nf4_matmul(x, lin, tile=tile, decode="lut"), replays)
    io = (rows * k + rows * n) * 2
    moved = {"lab": nf4_bytes(lin) + io, "gather": nf4_bytes(lin) + io, "bnb": nf4_bytes(lin) + io,
             "bf16": n * k * 2 + io}
    row = {"shape": f"{n}x{k}", "rows": rows, "max_rel_diff": diff, "tile": str(tile), "decode": nf4.decoder()}
    for name, ms in times.items():
        row[f"{name}_us"] = ms * 1000
        row[f"{name}_gbs"] = moved[name] / (ms / 1000) / 1e9
    return row


def sweep(lin, rows: int, deadline: float) -> list[tuple[str, float, float]]:
    """Every tile of a grid timed on this product: (tile, µs, GB/s), fastest first."""
    from lab.engine.kernels import nf4

    n, k = lin.weight.quant_state.shape
    kb = k // 64
    x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
    moved = nf4_bytes(lin) + (rows * k + rows * n) * 2
    out = []
    tiles = [nf4.Tile(w, nb, s) for w in (1, 2, 4, 8) for nb in (2, 4, 8) for s in (0, 1, 2, 4, 8, 16)
             if kb // max(s, 1) >= nb and not (w == 1 and nb == 2)]
    for tile in tiles:
        if time.monotonic() > deadline:
            print(f"  (sweep budget spent: {len(out)} of {len(tiles)} tiles timed)", flush=True)
            break
        try:
            with torch.inference_mode():
                us = graph_time_ms(lambda t=tile: nf4.nf4_matmul(x, lin, tile=t), 5) * 1000
        except Exception as e:  # noqa: BLE001 - report and go on: one run should say as much as it can
            print(f"  {n}x{k} rows {rows} {tile}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        out.append((str(tile), us, moved / (us / 1e6) / 1e9))
    out.sort(key=lambda t: t[1])
    return out


def table(rows: list[dict], steps: dict) -> str:
    head = ("| shape (out x in) | rows | lab µs | lab GB/s | bnb µs | bnb GB/s | bf16 µs | bf16 GB/s "
            "| lab/bnb speed-up | lab/bf16 speed-up | gather µs | tile | max rel diff |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(f"| {r['shape']} | {r['rows']} | {r['lab_us']:.1f} | {r['lab_gbs']:.0f} | {r['bnb_us']:.1f} | "
                   f"{r['bnb_gbs']:.0f} | {r['bf16_us']:.1f} | {r['bf16_gbs']:.0f} | {r['bnb_us'] / r['lab_us']:.2f}x | "
                   f"{r['bf16_us'] / r['lab_us']:.2f}x | "
                   f"{format(r['gather_us'], '.1f') if 'gather_us' in r else '-'} | {r['tile']} | {r['max_rel_diff']:.1e} |\n"
                   for r in rows)
    step = "".join(f"| {n} | {s['lab']:.3f} | {s['bnb']:.3f} | {s['bf16']:.3f} | {s['bnb'] / s['lab']:.2f}x | "
                   f"{s['bf16'] / s['lab']:.2f}x |\n" for n, s in steps.items())
    return (head + body + f"\nOne decode step's products ({LAYERS} layers x q, k, v, o, gate, up, down):\n\n"
            "| rows | lab ms | bnb ms | bf16 ms | lab vs bnb | lab vs bf16 |\n|---|---|---|---|---|---|\n" + step)


def _ints(name: str, default: str) -> list[int]:
    value = os.environ.get(name, default).strip()
    return [int(v) for v in value.split(",") if v.strip()]


def cache_len(context: int) -> int:
    """The slots the engine gives a context and 256 new tokens: max(1024, the next power of two)."""
    from lab.engine.fastpath import MIN_SLOTS

    return max(MIN_SLOTS, 1 << (context + 256 - 1).bit_length())


def measure_attention(rows: int, context: int, replays: int) -> dict:
    import torch.nn.functional as F

    from lab.engine.kernels import attention

    slots = cache_len(context)
    q = torch.randn(rows, N_KV, GROUP, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    k, v = (torch.randn(rows, N_KV, slots, HEAD_DIM, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    cur, pad = torch.tensor([context], device="cuda"), torch.zeros(rows, dtype=torch.long, device="cuda")
    positions = torch.arange(slots, device="cuda")
    mask = ((positions <= cur) & (positions >= pad[:, None]))[:, None, None, :]  # once a step, as _step does
    scale = HEAD_DIM ** -0.5
    reason = attention.supports(q, k)
    if reason:
        raise SystemExit(f"the lab attention kernel cannot run here: {reason}.")
    with torch.inference_mode():
        theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        ours = attention.decode_attention(q, k, v, cur, pad, scale)
        diff = (ours.float() - theirs.float()).abs().max().item()
        times = {"sdpa": graph_time_ms(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale),
                                       replays),
                 "lab": graph_time_ms(lambda: attention.decode_attention(q, k, v, cur, pad, scale), replays)}
    needed = 2 * rows * N_KV * (context + 1) * HEAD_DIM * 2
    row = {"rows": rows, "context": context, "slots": slots, "chunk": attention.chunk_of(rows, N_KV, slots),
           "max_abs_diff": diff}
    for name, ms in times.items():
        row[f"{name}_us"] = ms * 1000
        row[f"{name}_gbs"] = needed / (ms / 1000) / 1e9
    return row


def attention_table(rows: list[dict]) -> str:
    head = ("| rows | context | cache slots | chunk | sdpa µs | sdpa GB/s | lab µs | lab GB/s | lab/sdpa speed-up "
            "| max abs diff |\n|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(f"| {r['rows']} | {r['context']} | {r['slots']} | {r['chunk']} | {r['sdpa_us']:.1f} | "
                          f"{r['sdpa_gbs']:.0f} | {r['lab_us']:.1f} | {r['lab_gbs']:.0f} | "
                          f"{r['sdpa_us'] / r['lab_us']:.2f}x | {r['max_abs_diff']:.1e} |\n" for r in rows)


def run_attention(args, t0: float) -> tuple[str, dict]:
    rows = []
    for n_rows in ATTENTION_ROWS:
        for context in ATTENTION_CONTEXTS:
            r = measure_attention(n_rows, context, args.replays)
            rows.append(r)
            print(f"attention rows {n_rows} context {context}: sdpa {r['sdpa_us']:.1f} µs, lab {r['lab_us']:.1f} µs "
                  f"{r['lab_gbs']:.0f} GB/s (chunk {r['chunk']}), lab/sdpa {r['sdpa_us'] / r['lab_us']:.2f}x, "
                  f"diff {r['max_abs_diff']:.1e}  [{time.monotonic() - t0:.0f} s]", flush=True)
            torch.cuda.empty_cache()
    text = (f"## Decode attention ({N_KV} key heads x {GROUP} query heads, d {HEAD_DIM}, bf16)\n\n"
            + attention_table(rows))
    return text, {"attention": rows}


def selected_cases() -> list[str]:
    value = [c.strip().lower() for c in os.environ.get("LAB_KERNELS_CASES", ",".join(CASES)).split(",") if c.strip()]
    unknown = [c for c in value if c not in CASES]
    if unknown or not value:
        raise SystemExit(f"LAB_KERNELS_CASES takes a comma-separated subset of {', '.join(CASES)}, not {unknown}.")
    return value


def run(args) -> int:
    if not torch.cuda.is_available():
        print("python -m lab.bench kernels needs a CUDA GPU; run it on the GPU machine.")
        return 2
    import triton

    cases = selected_cases()
    torch.manual_seed(0)
    t0 = time.monotonic()
    props = torch.cuda.get_device_properties(0)
    machine = f"{props.name}, torch {torch.__version__}, triton {triton.__version__}"
    if "nf4" in cases or "int8" in cases:
        import bitsandbytes

        machine += f", bitsandbytes {bitsandbytes.__version__}"
    names = {"nf4": "NF4", "int8": "LLM.int8", "attention": "attention"}
    head = f"# {' and '.join(names[c] for c in cases)} kernels, {machine}\n\n"
    head += f"{args.command_line}\n\n"
    done: list[str] = []
    data: dict = {"machine": machine}
    if "attention" in cases:  # seconds, before the NF4 sweep's minutes
        text, more = run_attention(args, t0)
        done.append(text)
        data |= more
        print(text, flush=True)
        _save(args.out, head + "\n\n".join(done), data)
    if "int8" in cases:  # a minute: its tiles are timed once per shape and row count
        text, more = run_int8(args, t0)
        done.append(text)
        data |= more
        _save(args.out, head + "\n\n".join(done), data)
    if "nf4" in cases:
        run_nf4(args, t0, lambda text, more: _save(args.out, head + "\n\n".join(done + [text]), data | more))
    return 0


def int8_layer(n: int, k: int):
    import bitsandbytes as bnb

    plain = torch.nn.Linear(k, n, bias=False, dtype=torch.float16, device="cuda")
    layer = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False, threshold=6.0)
    layer.load_state_dict(plain.state_dict())
    layer = layer.to("cuda").eval()  # quantizes the rows
    layer.init_8bit_state()
    return layer, plain.weight.detach()


def measure_int8(n: int, k: int, rows: int, replays: int) -> dict:
    from lab.engine.kernels import int8, int8_mm

    layer, w16 = int8_layer(n, k)
    cb, scb = layer.state.CB, layer.state.SCB
    x = torch.randn(rows, k, dtype=torch.float16, device="cuda")
    x[torch.arange(INT8_OUTLIERS) % rows, torch.randperm(k, device="cuda")[:INT8_OUTLIERS]] = 8.0
    seen = torch.zeros((), dtype=torch.long, device="cuda")
    theirs = int8.Int8Linear(cb, scb, None, 6.0, torch.zeros((), dtype=torch.long, device="cuda"))
    with torch.inference_mode():
        want = layer(x).float()
        ours = int8_mm.int8_matmul(x, cb, scb, None, 6.0, seen)  # times its tiles, once
        diff = ((ours.float() - want).abs().max() / want.abs().max()).item()
        tile = int8_mm.chosen(x, cb, None)
        times = {"lab": graph_time_ms(lambda: int8_mm.int8_matmul(x, cb, scb, None, 6.0, seen), replays),
                 "bnb": graph_time_ms(lambda: theirs.ops(x), replays),
                 "fp16": graph_time_ms(lambda: x @ w16.T, replays)}
    row = {"shape": f"{n}x{k}", "rows": rows, "tile": str(tile), "max_rel_diff": diff, "outliers_seen": int(seen)}
    for name, ms in times.items():
        row[f"{name}_us"] = ms * 1000
        row[f"{name}_gbs"] = (n * k * (2 if name == "fp16" else 1) + 4 * n) / (ms / 1000) / 1e9
    return row


def run_int8(args, t0: float) -> tuple[str, dict]:
    rows = []
    for n_rows in _ints("LAB_KERNELS_ROWS", "1,2,4,8"):
        for name, (n, k) in INT8_SHAPES.items():
            r = measure_int8(n, k, n_rows, args.replays)
            torch.cuda.empty_cache()  # its weights and graphs
            r["product"] = name
            rows.append(r)
            print(f"int8 {name} {r['shape']} rows {n_rows}: lab {r['lab_us']:.1f} µs {r['lab_gbs']:.0f} GB/s "
                  f"({r['tile']}), bnb ops {r['bnb_us']:.1f} µs, fp16 {r['fp16_us']:.1f} µs, "
                  f"lab/bnb {r['bnb_us'] / r['lab_us']:.2f}x, diff {r['max_rel_diff']:.1e}  "
                  f"[{time.monotonic() - t0:.0f} s]", flush=True)
    text = ("## LLM.int8 products (the step's four per layer; 4 outlier columns)\n\n"
            "| product | shape (out x in) | rows | lab µs | lab GB/s | bnb ops µs | bnb GB/s | fp16 µs | lab/bnb "
            "speed-up | lab/fp16 speed-up | tile | max rel diff |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    text += "".join(f"| {r['product']} | {r['shape']} | {r['rows']} | {r['lab_us']:.1f} | {r['lab_gbs']:.0f} | "
                    f"{r['bnb_us']:.1f} | {r['bnb_gbs']:.0f} | {r['fp16_us']:.1f} | {r['bnb_us'] / r['lab_us']:.2f}x | "
                    f"{r['fp16_us'] / r['lab_us']:.2f}x | {r['tile']} | {r['max_rel_diff']:.1e} |\n" for r in rows)
    steps = {}
    for n_rows in sorted({r["rows"] for r in rows}):
        mine = [r for r in rows if r["rows"] == n_rows]
        steps[n_rows] = {name: LAYERS * sum(r[f"{name}_us"] for r in mine) / 1000 for name in ("lab", "bnb", "fp16")}
    text += "\nOne decode step's products (28 layers x the four):\n\n| rows | lab ms | bnb ops ms | fp16 ms |\n" \
            "|---|---|---|---|\n" + "".join(f"| {r} | {s['lab']:.3f} | {s['bnb']:.3f} | {s['fp16']:.3f} |\n"
                                             for r, s in steps.items())
    print(text, flush=True)
    return text, {"int8": rows, "int8_steps": steps}


def run_nf4(args, t0: float, save) -> None:
    """The NF4 products; `save(text, data)` writes the report so far (after the table, and after the sweep)."""
    from lab.engine.kernels import nf4

    row_counts, sweep_rows = _ints("LAB_KERNELS_ROWS", "1,2,4,8"), _ints("LAB_KERNELS_SWEEP", "")
    deadline = t0 + float(os.environ.get("LAB_KERNELS_BUDGET_S", "200"))
    unique = sorted(set(SHAPES.values()), key=lambda s: (s[0] * s[1], s))
    modules = {shape: nf4_module(*shape) for shape in unique}
    found: dict[tuple, dict] = {}
    for shape in unique:
        w16 = torch.randn(*shape, dtype=torch.bfloat16, device="cuda")
        for n_rows in row_counts:
            r = found[(shape, n_rows)] = measure(modules[shape], w16, n_rows, args.replays)
            print(f"{r['shape']} rows {n_rows}: lab {r['lab_us']:.1f} µs {r['lab_gbs']:.0f} GB/s ({r['tile']}, "
                  f"{r['decode']}), bnb {r['bnb_us']:.1f} µs, bf16 {r['bf16_us']:.1f} µs, "
                  f"lab/bnb {r['bnb_us'] / r['lab_us']:.2f}x, diff {r['max_rel_diff']:.1e}"
                  + (f", gather {r['gather_us']:.1f} µs" if "gather_us" in r else "")
                  + f"  [{time.monotonic() - t0:.0f} s]", flush=True)
        del w16
        torch.cuda.empty_cache()  # the bf16 weights and the graphs
    rows = [found[(s, r)] for r in row_counts for s in unique]
    steps = {r: {name: LAYERS * sum(found[(s, r)][f"{name}_us"] for s in SHAPES.values()) / 1000
                 for name in ("lab", "bnb", "bf16")} for r in row_counts}
    text = f"## NF4 products\n\n{table(rows, steps)}"
    if nf4.PRMT_FAILED:
        text += f"\nThe register-table decode FAILED (the gather ran): {nf4.PRMT_FAILED[0]}\n"
    print(text, flush=True)  # before the sweep: a run cut short still has its table
    save(text, {"rows": rows, "steps": steps, "prmt_failed": nf4.PRMT_FAILED})
    swept: dict[str, list] = {}
    plan = [(shape, n_rows) for n_rows in sweep_rows for shape in unique]
    for i, (shape, n_rows) in enumerate(plan):  # each its share of the time left
        now = time.monotonic()
        got = swept[f"{shape[0]}x{shape[1]}/{n_rows}"] = sweep(modules[shape], n_rows,
                                                                now + (deadline - now) / (len(plan) - i))
        best = ", ".join(f"{t} {us:.1f} µs {gbs:.0f} GB/s" for t, us, gbs in got[:4])
        print(f"sweep {shape[0]}x{shape[1]} rows {n_rows}, fastest: {best}  [{time.monotonic() - t0:.0f} s]",
              flush=True)
    if swept:
        extra = "\nTiles swept (warps / blocks a step / K split), fastest four:\n\n"
        extra += "".join(f"- {key} rows: " + ", ".join(f"{t} {us:.1f} µs ({gbs:.0f} GB/s)" for t, us, gbs in v[:4])
                         + "\n" for key, v in swept.items())
        for r in sweep_rows:
            if all(swept.get(f"{s[0]}x{s[1]}/{r}") for s in SHAPES.values()):
                best = LAYERS * sum(swept[f"{s[0]}x{s[1]}/{r}"][0][1] for s in SHAPES.values()) / 1000
                base = f" (bnb {steps[r]['bnb']:.3f}, bf16 {steps[r]['bf16']:.3f})" if r in steps else ""
                extra += f"\nOne decode step at {r} rows with each shape's fastest swept tile: {best:.3f} ms{base}\n"
        print(extra, flush=True)
        text += extra
    save(text, {"rows": rows, "steps": steps, "swept": swept, "prmt_failed": nf4.PRMT_FAILED})


def _save(folder: str | None, text: str, data: dict) -> None:
    if folder:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / "kernels.md").write_text(text)
        (out / "kernels.json").write_text(json.dumps(data, indent=1))
