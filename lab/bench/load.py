"""Many clients at once against `lab.serve`: streams driven through the `openai` SDK from client processes (as
real clients are: their parsing never competes with the server's decode loop for the GIL), each case side by side
with its one-at-a-time baseline measured in the same run.

    # anywhere (a CPU, tiny-random): 8 concurrent /v1/chat/completions streams against the same 8 one after another
    python -m lab.bench load --shape tiny
    # on a CUDA machine, the 7B shape (LAB_DATA_DIR/qwen2.5-tokenizer/config.json), the issue's table
    python -m lab.bench load --shape 7b --quants bf16,4bit --cases alone,8,32,ttft,mmlu --out lab/bench/results

Cases (rows: case, baseline, ours, ratio, target, met):
  alone   one stream alone: its decode tok/s (the baseline of the rows below)
  seq     N streams one after another vs N at once: total time (the CPU row, N = --streams)
  8, 32   that many concurrent streams: total tok/s vs one alone, and each stream's tok/s vs alone (8)
  ttft    first token p95 of 8 streams that join a running batch one by one (50 ms apart)
  mmlu    a chat stream's tok/s while `score_choices` scores MMLU 5-shot prompts in another thread vs alone

Every stream: the same --prompt-tokens prompt, --new-tokens forced tokens (end of turn masked), sampled at the
page's defaults, its own seed. Times are the client's: request sent, first content chunk, last chunk.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

from lab import runtime
from lab.bench.chat import prompt_of_length, shape_checkpoint
from lab.bench.clients import Clients, many, solo
from lab.bench.fast import row, to_markdown
from lab.models import load_model


def serve(model):
    """lab.serve's app over `model` on a free port, in a thread; returns (base URL, server)."""
    import socket

    import uvicorn

    from lab.models.manager import LoadRequest, ModelManager
    from lab.serve import build_api

    manager = ModelManager(loader=lambda *a, **k: model)
    manager.load(LoadRequest("bench"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_api(manager), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/v1", server


def p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]


def mmlu_alongside(model, client, messages, new_tokens: int, data_dir: str | None) -> tuple[float, float, int]:
    """A chat stream's tok/s alone and while MMLU 5-shot prompts are scored in another thread; questions scored."""
    from lab.eval.plan import EvalRequest
    from lab.eval.runner import Runner
    from lab.eval.store import RunStore

    items = Runner(RunStore.open(Path("/tmp/lab-bench-runs"))).plan(EvalRequest("mmlu", shots=5,
                                                                                data_dir=data_dir)).items
    prompts = [it.prompt for it in items]
    alone = solo(client, messages, new_tokens, 0)["tok_s"]
    stop, scored = threading.Event(), [0]

    def score() -> None:
        for i in range(0, len(prompts), 256):
            if stop.is_set():
                return
            model.score_choices(prompts[i:i + 256], [" A", " B", " C", " D"])
            scored[0] += len(prompts[i:i + 256])

    worker = threading.Thread(target=score, daemon=True)
    worker.start()
    time.sleep(2.0)  # the run is under way
    during = solo(client, messages, new_tokens, 1)["tok_s"]
    stop.set()
    worker.join()
    return alone, during, scored[0]


def run(args) -> int:
    quants = [q.strip() for q in args.quants.split(",") if q.strip()]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    path = shape_checkpoint(args.shape, Path(args.work_dir))
    meta = {"shape": args.shape, "command": args.command_line, "versions": runtime.versions(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    rows: list[dict] = []

    def add(r: dict) -> None:
        rows.append(r)
        print(json.dumps(r), flush=True)

    for quant in quants:
        model = load_model(str(path), quant=quant)
        print(f"loaded {model.info.summary()}; scheduler: {model.engine_off_reason or 'on'}", flush=True)
        url, server = serve(model)
        client = Clients(url, model.info.name, max(8, args.streams, 32 if "32" in cases else 0))
        messages = prompt_of_length(model, args.prompt_tokens)
        new, where = args.new_tokens, f"{args.shape} {quant}, {args.prompt_tokens}-token prompt, {args.new_tokens} new"
        model.set_scheduling(max_rows=max(8, args.streams))
        many(client, messages, 8, max(8, args.streams))  # warm-up: the batched decoder built (and compiled)
        solo(client, messages, 8, 0)
        alone = statistics.median(solo(client, messages, new, k)["tok_s"] for k in range(args.repeats))
        if "alone" in cases:
            add(row(f"one stream alone ({where})", None, round(alone, 1), "—", None, "tok/s"))
        if "seq" in cases:
            n = args.streams
            t_seq = sum(many(client, messages, new, 1, seed=k)[0] for k in range(n))
            t_con, _ = many(client, messages, new, n)
            add(row(f"{n} concurrent /v1/chat/completions streams vs one after another: total time ({where})",
                    round(t_seq, 2), round(t_con, 2), ">= 3x", t_seq / t_con >= 3, "s",
                    "ratio = one after another / concurrent") | {"ratio": t_seq / t_con})
        for n in (8, 32):
            if str(n) not in cases:
                continue
            model.set_scheduling(max_rows=n)
            many(client, messages, 8, n)  # warm-up at this width
            wall, out = many(client, messages, new, n)
            total = sum(o["tokens"] for o in out) / wall
            target = 6 if n == 8 else 15
            add(row(f"{n} concurrent streams: total tok/s vs one stream alone ({where})", round(alone, 1),
                    round(total, 1), f">= {target}x", total / alone >= target, "tok/s",
                    f"wall {wall:.1f} s for {n} x {new} tokens"))
            if n == 8:
                each = statistics.median(o["tok_s"] for o in out)
                add(row(f"8 concurrent: each stream's tok/s vs alone ({where})", round(alone, 1), round(each, 1),
                        ">= 70%", each / alone >= 0.7, "tok/s",
                        f"median of 8; slowest {min(o['tok_s'] for o in out):.1f}"))
        if "ttft" in cases:
            model.set_scheduling(max_rows=8)
            many(client, messages, 8, 8)  # warm-up: the 8-row decoder again, if the 32-row one pushed it out
            _, out = many(client, messages, new, 8, stagger=0.05, seed=100)
            ttfts = [o["ttft"] * 1000 for o in out[1:]]  # every one but the first joins a running batch
            add(row(f"first token p95, streams joining a running batch of up to 8 ({where})", None,
                    round(p95(ttfts), 1), "<= 150 ms", p95(ttfts) <= 150, "ms",
                    f"7 streams started 50 ms apart beside the first; all {[round(x) for x in ttfts]}"))
        if "mmlu" in cases:
            a, during, scored = mmlu_alongside(model, client, messages, new, args.data_dir)
            add(row(f"a chat stream's tok/s while MMLU is scored ({where})", round(a, 1), round(during, 1),
                    ">= 50% of alone", during / a >= 0.5, "tok/s", f"{scored} questions scored meanwhile"))
        client.close()
        server.should_exit = True
        model.close()
        runtime.release_gpu_memory()
    text = to_markdown(rows, [], meta).replace("# Fast paths", "# Many streams at once", 1)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"load-{args.shape}.md").write_text(text)
        (out / f"load-{args.shape}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0
