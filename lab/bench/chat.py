"""Chat-path baseline: load a model through `lab.models.load_model` in each quantization, stream
replies through `HFModel.stream_chat` (the path the page uses), and record weight memory, peak
memory, time to first token and decode speed.

    # on a CUDA machine; the 7B shape comes from LAB_DATA_DIR/qwen2.5-tokenizer/config.json
    python -m lab.bench chat --shape 7b --quants bf16,8bit,4bit --out OUT_DIR
    # anywhere (what the tests run)
    python -m lab.bench chat --shape tiny --quants fp32 --new-tokens 32 --repeats 1

Speed does not depend on weight values, so the 7B shape gets seeded random weights, written once
to --work-dir as a normal checkpoint and then loaded like a downloaded one. Replies are forced to
the full length (end-of-turn masked) so every run decodes the same number of tokens.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from lab import runtime
from lab.errors import LabError
from lab.interface import SamplingParams
from lab.models import load_model
from lab.models.tiny import ensure_tiny_checkpoint, qwen_tokenizer_dir, write_random_checkpoint
from lab.runtime import GIB


def shape_checkpoint(shape: str, work_dir: Path) -> Path:
    """A local checkpoint of the requested shape with random weights."""
    if shape == "tiny":
        return ensure_tiny_checkpoint()
    src = qwen_tokenizer_dir()
    if src is None or not (src / "config.json").is_file():
        raise LabError("The 7b shape needs LAB_DATA_DIR pointing at a folder with qwen2.5-tokenizer/config.json.")
    out = work_dir / "qwen2.5-7b-shape-random"
    if (out / "config.json").is_file():
        return out
    from transformers import AutoConfig, AutoTokenizer

    t = time.perf_counter()
    device = "cuda" if runtime.cuda_available() else "cpu"
    write_random_checkpoint(AutoConfig.from_pretrained(src), AutoTokenizer.from_pretrained(src), out,
                            seed=0, dtype=torch.bfloat16, device=device)
    runtime.release_gpu_memory()
    print(f"wrote random 7B-shape checkpoint to {out} in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def prompt_of_length(model, n_tokens: int) -> list[dict]:
    """Chat messages whose rendered prompt is exactly n_tokens long."""
    words = n_tokens
    for _ in range(8):
        messages = [{"role": "user", "content": "Summarise:" + " the" * words}]
        got = model.count_chat_tokens(messages)
        if got == n_tokens:
            return messages
        words += n_tokens - got
    raise RuntimeError(f"could not build a prompt of exactly {n_tokens} tokens")


def plain_generate_tok_s(model, messages: list[dict], new_tokens: int) -> float:
    """Decode speed of a bare greedy `generate()` without streaming, for reference: the time of
    new_tokens minus the time of 1 (the prefill), over new_tokens - 1 steps."""
    ids = torch.tensor([model.encode(model.render(messages))], device=model.device)

    def timed(n: int) -> float:
        if runtime.cuda_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            model.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, pad_token_id=model.pad_id)
        if runtime.cuda_available():
            torch.cuda.synchronize()
        return time.perf_counter() - t

    return (new_tokens - 1) / (timed(new_tokens) - timed(1))


def stream_stats(model, messages: list[dict], params: SamplingParams):
    stats = [c.stats for c in model.stream_chat(messages, params) if c.stats][0]
    assert stats.completion_tokens == params.max_new_tokens, stats
    return stats


def measure_quant(path: Path, quant: str, prompt_tokens: int, new_tokens: int, repeats: int) -> dict:
    """Each repeat runs the three variants back to back, so machine noise hits them alike."""
    base = torch.cuda.memory_allocated() if runtime.cuda_available() else 0
    t = time.perf_counter()
    model = load_model(str(path), quant=quant)
    load_s = time.perf_counter() - t
    messages = prompt_of_length(model, prompt_tokens)
    sampled = SamplingParams(max_new_tokens=new_tokens, seed=0, ignore_eos=True)  # the page's defaults
    greedy = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=new_tokens, ignore_eos=True)
    stream_stats(model, messages, SamplingParams(max_new_tokens=8, seed=0, ignore_eos=True))  # warm-up
    plain_generate_tok_s(model, messages, 8)
    runs, greedy_tps, plain_tps = [], [], []
    for _ in range(repeats):
        runs.append(stream_stats(model, messages, sampled))
        greedy_tps.append(round(stream_stats(model, messages, greedy).decode_tokens_per_s, 1))
        plain_tps.append(round(plain_generate_tok_s(model, messages, new_tokens), 1))
    row = {
        "quant": quant,
        "detail": model.info.quant_detail,
        "load_s": round(load_s, 1),
        "weights_gib": round(model.info.weight_bytes / GIB, 2),
        "peak_gib": max((r.gpu_mem_peak_gib or 0) for r in runs) or None,
        "ttft_ms": [round(r.ttft_s * 1000, 1) for r in runs],
        "decode_tok_s": [round(r.decode_tokens_per_s, 1) for r in runs],
        "greedy_stream_tok_s": greedy_tps,
        "plain_generate_tok_s": plain_tps,
        "prompt_tokens": runs[0].prompt_tokens,
        "new_tokens": new_tokens,
    }
    model.close()
    del model
    runtime.release_gpu_memory()
    if runtime.cuda_available():
        row["left_after_close_gib"] = round((torch.cuda.memory_allocated() - base) / GIB, 3)
    return row


def to_markdown(rows: list[dict], meta: dict) -> str:
    med = statistics.median
    lines = [
        f"# Chat-path baseline: {meta['shape']} shape, random weights",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Measured {meta['date']} on {meta['versions'].get('gpu') or meta['versions'].get('cpu')}; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if k not in ("gpu", "cpu") and v),
        "",
        f"Batch 1, prompt {meta['prompt_tokens']} tokens through the chat template, {meta['new_tokens']} new tokens "
        f"(end-of-turn masked), the page's sampling defaults (temperature 0.7, top-p 0.8, top-k 20, repetition "
        f"penalty 1.05), through `HFModel.stream_chat`. Median of {meta['repeats']} runs after a warm-up; "
        "every run is listed in brackets. Each repeat runs, back to back: the page's path with its sampling "
        "defaults ('decode tok/s'), the page's path greedy ('greedy stream'), and a bare greedy `generate()` "
        "without streaming ('plain generate()'), so the cost of sampling and of streaming can be told apart. "
        "'left after close' is GPU memory still allocated after `close()`, i.e. what switching models keeps.",
        "",
        "| quant | weights GiB | peak GiB | first token ms | decode tok/s | greedy stream tok/s "
        "| plain generate() tok/s | load s | left after close GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        peak = "—" if r.get("peak_gib") is None else f"{r['peak_gib']:.2f}"
        left = r.get("left_after_close_gib", "—")
        lines.append(
            f"| {r['quant']} {('(' + r['detail'] + ')') if r['detail'] else ''} | {r['weights_gib']:.2f} | {peak} | "
            f"{med(r['ttft_ms']):.1f} {r['ttft_ms']} | {med(r['decode_tok_s']):.1f} {r['decode_tok_s']} | "
            f"{med(r['greedy_stream_tok_s']):.1f} {r['greedy_stream_tok_s']} | "
            f"{med(r['plain_generate_tok_s']):.1f} {r['plain_generate_tok_s']} | {r['load_s']} | {left} |"
        )
    return "\n".join(lines) + "\n"


def run(args) -> int:
    quants = [q.strip() for q in args.quants.split(",") if q.strip()]
    path = shape_checkpoint(args.shape, Path(args.work_dir))
    meta = {
        "shape": args.shape, "command": args.command_line, "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens, "repeats": args.repeats, "versions": runtime.versions(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    rows = []
    out = Path(args.out) if args.out else None
    previous = out / f"chat-{args.shape}.json" if out else None
    if args.append and previous and previous.is_file():  # a long run split over several calls: one table
        earlier = json.loads(previous.read_text())
        rows = earlier["rows"]
        meta["command"] = f"{earlier['meta']['command']}` then `{meta['command']}"
    for quant in quants:
        row = measure_quant(path, quant, args.prompt_tokens, args.new_tokens, args.repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if out:  # written after every quantization, so a run cut short still leaves its numbers
            out.mkdir(parents=True, exist_ok=True)
            (out / f"chat-{args.shape}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
            (out / f"chat-{args.shape}.md").write_text(to_markdown(rows, meta))
    print(to_markdown(rows, meta))
    return 0
