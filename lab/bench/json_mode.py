"""What JSON mode costs: decode speed of the chat path with and without the grammar constraint.

    python -m lab.bench structured --shape tiny --quants fp32          # CPU, tiny-random
    python -m lab.bench structured --shape 7b --quants bf16,4bit       # CUDA, the 7B shape

Both variants stream through `HFModel.stream_chat` with the page's sampling defaults, one after the
other in each repeat, from the same prompt. The constrained one asks for an object with one string
field: random weights stay inside the string until the last tokens close it, so it decodes about as
many tokens as the free one (forced to the full length). The two replies are different texts, and
on a CPU streaming them costs differently (detokenizing random byte pieces competes with decoding
for the GIL), so the tok/s pair is context; the overhead is measured directly: the time spent inside
the grammar processor over the reply's decode time, in the same reply. The one-off grammar
compilation (cached per schema) is reported apart.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from lab import runtime
from lab.bench.chat import prompt_of_length, shape_checkpoint
from lab.chat.json_mode import response_format, validate
from lab.interface import SamplingParams
from lab.models import load_model

SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


def measure(path: Path, quant: str, prompt_tokens: int, new_tokens: int, repeats: int) -> dict:
    model = load_model(str(path), quant=quant)
    messages = prompt_of_length(model, prompt_tokens)
    fmt = response_format(True, json.dumps(SCHEMA))
    free = SamplingParams(max_new_tokens=new_tokens, seed=0, ignore_eos=True)
    constrained = SamplingParams(max_new_tokens=new_tokens, seed=0, response_format=fmt)
    t = time.perf_counter()
    list(model.stream_chat(messages, SamplingParams(max_new_tokens=4, seed=0, response_format=fmt)))  # compiles
    first_s = time.perf_counter() - t
    list(model.stream_chat(messages, SamplingParams(max_new_tokens=4, seed=0)))  # warm-up
    free_tps, json_tps, json_tokens, share, valid = [], [], [], [], 0
    for _ in range(repeats):
        chunks = list(model.stream_chat(messages, free))
        free_tps.append(chunks[-1].stats.decode_tokens_per_s)
        chunks = list(model.stream_chat(messages, constrained))
        stats = chunks[-1].stats
        json_tps.append(stats.decode_tokens_per_s)
        json_tokens.append(stats.completion_tokens)
        decode_s = (stats.completion_tokens - 1) / stats.decode_tokens_per_s
        share.append(100 * stats.constraint_s / decode_s)
        valid += bool(validate("".join(c.text for c in chunks), fmt).valid)
    model.close()
    runtime.release_gpu_memory()
    f, j = statistics.median(free_tps), statistics.median(json_tps)
    return {"quant": quant, "free_tok_s": [round(x, 1) for x in free_tps],
            "json_tok_s": [round(x, 1) for x in json_tps],
            "json_tokens": json_tokens, "valid": f"{valid}/{repeats}", "tok_s_change_pct": round(100 * (j - f) / f, 1),
            "constraint_pct_of_decode": [round(x, 2) for x in share],
            "first_json_reply_s": round(first_s, 2), "new_tokens": new_tokens}


def to_markdown(rows: list[dict], meta: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    lines = [f"# JSON mode overhead: {meta['shape']} shape, random weights", "",
             f"`{meta['command']}` — {meta['date']}; {versions}",
             "", "| quant | grammar time / decode time (median) | free tok/s | JSON tok/s | JSON tokens | valid "
             "| first JSON reply s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['quant']} | {statistics.median(r['constraint_pct_of_decode']):.2f}% "
                     f"| {statistics.median(r['free_tok_s']):.1f} | {statistics.median(r['json_tok_s']):.1f}"
                     f" | {statistics.median(r['json_tokens']):.0f} | {r['valid']} | {r['first_json_reply_s']} |")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    path = shape_checkpoint(args.shape, Path(args.work_dir))
    meta = {"shape": args.shape, "command": args.command_line, "versions": runtime.versions(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    rows = []
    for quant in [q.strip() for q in args.quants.split(",") if q.strip()]:
        rows.append(measure(path, quant, args.prompt_tokens, args.new_tokens, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    text = to_markdown(rows, meta)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"structured-{args.shape}.md").write_text(text)
        (out / f"structured-{args.shape}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(text)
    return 0
