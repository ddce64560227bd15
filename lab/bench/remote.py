"""`python -m lab.bench remote`: what requests in flight buy against a server. The same gen-mode MMLU run through
`--model openai:URL#NAME` once per --concurrency (1 first: the baseline), side by side in one command, with the
samples of every row checked equal to the first's.

    python -m lab.bench remote                                   # starts python -m lab.serve --model tiny-random
    python -m lab.bench remote --concurrency 1,4,16 --limit 64 --new-tokens 32
    python -m lab.bench remote --url http://gpu-box:8000/v1#Qwen2.5-7B-Instruct --limit 512   # a deployment

Greedy, so the replies do not depend on which request runs beside which: only the wall time may differ.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from lab.errors import LabError


def _serve(model: str, log: Path) -> tuple[subprocess.Popen, str]:
    """python -m lab.serve --model MODEL on a free port; (process, base URL) once /health answers."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "lab.serve", "--model", model, "--port", str(port)],
                            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"python -m lab.serve ended with status {proc.returncode}; its log is {log}.")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url + "/v1"
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise LabError(f"python -m lab.serve did not answer within 300 s; its log is {log}.")


def run(args) -> int:
    from lab.eval.plan import EvalRequest
    from lab.eval.runner import Runner
    from lab.eval.store import RunStore
    from lab.models.remote import connect

    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    work = Path(tempfile.mkdtemp(prefix="lab-bench-remote-"))
    proc = None
    if args.url:
        spec = args.url if args.url.startswith("openai:") else f"openai:{args.url}"
    else:
        proc, base = _serve(args.serve_model, work / "serve.log")
        spec = f"openai:{base}#{args.serve_model}"
    rows, first = [], None
    try:
        model = connect(spec, api_key=args.api_key)
        store = RunStore.open(work / "runs")
        req = EvalRequest("mmlu", mode="gen", limit=args.limit, max_new_tokens=args.new_tokens,
                          data_dir=args.data_dir, seed=args.seed)
        runner = Runner(store)
        runner.run(model, EvalRequest(**{**req.to_dict(), "limit": 2}))  # warm-up: connections, the server's first
        for n in levels:
            model.max_in_flight = n
            t = time.perf_counter()
            result = runner.run(model, req)
            took = time.perf_counter() - t
            outputs = [(s.key, s.output) for s in result.samples]
            first = first or outputs
            tokens = sum(s.detail.get("completion_tokens") or 0 for s in result.samples)
            rows.append({"concurrency": n, "seconds": took, "requests": len(outputs), "tokens": tokens,
                         "same_as_first": outputs == first})
        model.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    base_s = rows[0]["seconds"]
    head = (f"gen-mode MMLU through {spec}: {args.limit} questions, {args.new_tokens} new tokens each, greedy; "
            f"{platform.machine()}, {os.cpu_count()} CPUs")
    lines = [head, f"{'in flight':>9} {'seconds':>8} {'req/s':>7} {'tok/s':>7} {'speed-up':>9}  samples",
             *[f"{r['concurrency']:>9} {r['seconds']:>8.2f} {r['requests'] / r['seconds']:>7.2f} "
               f"{r['tokens'] / r['seconds']:>7.1f} {base_s / r['seconds']:>8.2f}x  "
               f"{'same as the first row' if r['same_as_first'] else 'DIFFER from the first row'}" for r in rows]]
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "remote.md").write_text(f"`{args.command_line}`\n\n```\n" + "\n".join(lines) + "\n```\n")
        (out / "remote.json").write_text(json.dumps({"command": args.command_line, "spec": spec, "rows": rows},
                                                    indent=2) + "\n")
    return 0 if all(r["same_as_first"] for r in rows) else 1
