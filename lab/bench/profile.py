"""Where one decode step's time goes: the page's captured step, kernel by kernel, summed by kind (CUDA).

    python -m lab.bench profile [--quants bf16,4bit] [--contexts 512,16384] [--out lab/bench/results]

Per quantization and context (tokens already in the cache): the chat decoder the page uses for one reply (its
compiled step, captured as CUDA graphs) is filled with a prompt of that length, then
  - `step ms`: one replay of the step's graph (no sampling), timed over many replays with CUDA events, and
    `sampled ms`: the graph the page replays (sampling, then the step);
  - each kind's kernel time per step from torch.profiler (CUPTI) over the same replays, and `gaps`: the step's
    time that no kernel covers (launch latency between the graph's nodes, idle tails of small kernels).
Kinds come from the kernels' names (see KINDS); the bf16 products include the lm_head (152,064 x 3,584).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import torch

from lab import runtime
from lab.bench.chat import shape_checkpoint
from lab.interface import SamplingParams
from lab.models import load_model

# First match wins: (kind, pattern over the kernel's name).
KINDS = (
    ("products (lab kernels: NF4, LLM.int8)", r"nf4_gemv|nf4_mma|sum_parts|int8_mm|int8_scan"),
    ("NF4 products (bitsandbytes)", r"kgemm_4bit|gemv_4bit|dequantize|kDequant"),
    ("LLM.int8 products", r"int8|igemm|vectorwise|outlier"),
    ("attention", r"fmha|attention|flash|efficient|attn"),
    ("bf16 products (cuBLAS; lm_head included)", r"gemm|gemv|nvjet|xmma|cutlass|cublas|splitk|sm90|sm80"),
    ("cache writes", r"index_copy|index_put|scatter"),
    ("fused elementwise (norms, rotary, residuals, SiLU; compiled)", r"^triton_|fused"),
    ("sampling (top-k, sort, draws)", r"topk|sort|radix|bitonic|multinomial|philox|distribution|cumsum|scan"),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, low):
            return kind
    return "other"


def replay_ms(graph: torch.cuda.CUDAGraph, n: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(n):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def kernel_times(graph: torch.cuda.CUDAGraph, n: int) -> dict[str, float]:
    """Each kernel name's total GPU time (ms) per replay, from CUPTI's records of `n` replays."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            graph.replay()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for e in prof.events():
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA and e.device_time > 0:
            totals[e.name] = totals.get(e.name, 0.0) + e.device_time / 1000 / n  # µs -> ms
    return totals


def profile_step(model, context: int, replays: int) -> dict:
    """The page's one-reply decoder with `context` tokens cached: step and sampled-step times, kernels by kind."""
    fast = model.fast
    dec = fast.acquire(1, context + 256)
    try:
        ids = torch.randint(100, 20000, (context,)).tolist()
        with torch.inference_mode():
            dec.prefill([ids])
            dec.set_sampling(SamplingParams(max_new_tokens=256, seed=0), [ids])
            for _ in range(3):
                dec.sample_step()
            step = replay_ms(dec.graph, replays)
            dec.cur.fill_(context)  # the same cache length for every timing
            sampled = replay_ms(dec.graph_sampled, replays)
            dec.cur.fill_(context)
            names = kernel_times(dec.graph, max(5, replays // 4))
    finally:
        fast.release(dec)
    kinds: dict[str, float] = {}
    for name, ms in names.items():
        kinds[kind_of(name)] = kinds.get(kind_of(name), 0.0) + ms
    covered = sum(kinds.values())
    top = sorted(names.items(), key=lambda kv: -kv[1])[:12]
    return {"context": context, "slots": dec.max_len, "step_ms": round(step, 3), "sampled_ms": round(sampled, 3),
            "sampling_ms": round(sampled - step, 3), "kinds_ms": {k: round(v, 3) for k, v in kinds.items()},
            "gaps_ms": round(step - covered, 3), "top_kernels": [[n[:90], round(ms, 4)] for n, ms in top]}


def to_markdown(results: list[dict], meta: dict) -> str:
    lines = [f"# One decode step, kernel by kernel: {meta['shape']} shape, {meta['gpu']}", "",
             f"Command: `{meta['command']}`", "", f"Measured {meta['date']}; {meta['versions']}", "",
             "| quant | kernels | context (slots) | sampled step ms (tok/s) | step ms | sampling ms | kind | ms "
             "| share |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        head = (f"| {r['quant']} | {r['kernels']} | {r['context']} ({r['slots']}) | {r['sampled_ms']:.3f} "
                f"({1000 / r['sampled_ms']:.1f}) | {r['step_ms']:.3f} | {r['sampling_ms']:.3f}")
        parts = sorted(r["kinds_ms"].items(), key=lambda kv: -kv[1]) + [("gaps (no kernel running)", r["gaps_ms"])]
        for i, (kind, ms) in enumerate(parts):
            lead = head if i == 0 else "| | | | | | "
            lines.append(f"{lead} | {kind} | {ms:.3f} | {100 * ms / r['step_ms']:.0f}% |")
    lines += ["", "Largest kernels per step (ms):", ""]
    for r in results:
        lines.append(f"- {r['quant']}, {r['kernels']}, context {r['context']}: "
                     + "; ".join(f"`{n}` {ms:.3f}" for n, ms in r["top_kernels"][:8]))
    return "\n".join(lines) + "\n"


def run(args) -> int:
    if not runtime.cuda_available():
        raise SystemExit("python -m lab.bench profile times the captured CUDA step: it needs a CUDA GPU.")
    from lab.engine.kernels import nf4

    quants = [q.strip() for q in args.quants.split(",") if q.strip()]
    contexts = [int(c) for c in args.contexts.split(",") if c.strip()]
    path = shape_checkpoint(args.shape, Path(args.work_dir))
    meta = {"shape": args.shape, "command": args.command_line, "versions": runtime.versions(),
            "gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    results = []
    for quant in quants:
        model = load_model(str(path), quant=quant)
        if model.fast is None:
            print(f"{quant}: no fast path ({model.engine_off_reason}); skipped", flush=True)
            model.close()
            continue
        for context in contexts:
            r = {"quant": quant, "kernels": nf4.kernels() if quant == "4bit" else "-"} \
                | profile_step(model, context, args.replays)
            results.append(r)
            print(json.dumps(r), flush=True)
        model.close()
        del model
        runtime.release_gpu_memory()
    text = to_markdown(results, meta)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.md").write_text(text)
        (out / "profile.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0
