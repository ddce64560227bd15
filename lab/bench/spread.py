"""`python -m lab.bench spread`: one `python -m lab.eval` command in one process beside the same under
`torchrun --nproc_per_node N` (lab/eval/distributed.py), in one run: wall times, the speed-up against N, and
whether the two runs' samples are equal.

    python -m lab.bench spread --nproc 2 -- mmlu --model tiny-random --limit 200           # CPU processes
    python -m lab.bench spread --nproc 8 -- mmlu --model Qwen2.5-7B-Instruct --quant bf16  # 8 GPUs: the full test
    python -m lab.bench spread --nproc 3 -- quant --model Qwen2.5-7B-Instruct --variants bf16,8bit,4bit \\
        --benchmarks mmlu                     # a variant a GPU, beside the variants one after another

Wall time is the whole command's, model loading included (each process loads its replica at the same time).
Both commands write into one fresh run history, which is then read to compare the samples.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _timed(cmd: list[str], runs: Path) -> tuple[float, int, str]:
    t = time.perf_counter()
    out = subprocess.run([*cmd, "--runs-dir", str(runs)], capture_output=True, text=True)
    took = time.perf_counter() - t
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
    return took, out.returncode, out.stdout


def _samples(runs: Path, skip: set) -> dict[tuple, list]:
    """(benchmark, subset, mode, quant) -> what the run's samples say (timings left out), for each run not in
    `skip` (a command makes one run of each)."""
    from lab.eval.store import RunStore

    store = RunStore.open(runs)
    return {(r.benchmark, r.subset, r.mode, r.quant): [(s.key, s.output, s.extracted, s.correct)
                                                       for s in store.samples(r.id)]
            for r in store.runs() if r.id not in skip}


def _ids(runs: Path) -> set:
    from lab.eval.store import RunStore

    return {r.id for r in RunStore.open(runs).runs()}


def run(args) -> int:
    evaluation = [a for a in args.evaluation if a != "--"]
    if not evaluation:
        print("error: give the lab.eval command after --, e.g. -- mmlu --model tiny-random --limit 200",
              file=sys.stderr)
        return 2
    runs = Path(tempfile.mkdtemp(prefix="lab-bench-spread-"))
    single = [sys.executable, "-m", "lab.eval", *evaluation]
    spread = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
              "-m", "lab.eval", *evaluation]
    t1, rc1, _ = _timed(single, runs)
    mine, before = _samples(runs, set()), _ids(runs)
    tn, rcn, _ = _timed(spread, runs)
    theirs = _samples(runs, before)
    equal = bool(mine) and mine == theirs
    print(f"python -m lab.eval {' '.join(evaluation)}; {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'processes':>9} {'seconds':>8} {'speed-up':>9} {'of ideal':>9}  status")
    print(f"{1:>9} {t1:>8.1f} {1.0:>8.2f}x {'':>9}  exit {rc1}")
    print(f"{args.nproc:>9} {tn:>8.1f} {t1 / tn:>8.2f}x {100 * t1 / tn / args.nproc:>8.0f}%  exit {rcn}; samples "
          f"{'equal to one process' if equal else 'DIFFER from one process'} ({len(theirs)} run(s))")
    return 0 if rc1 == rcn == 0 and equal else 1
