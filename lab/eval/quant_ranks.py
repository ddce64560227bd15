"""One quantization report spread over the processes of one host (`torchrun --nproc_per_node N -m lab.eval quant`):

    torchrun --nproc_per_node 3 -m lab.eval quant --model Qwen2.5-7B-Instruct --variants bf16,8bit,4bit \\
        --benchmarks mmlu,humaneval              # 3 GPUs: each variant on its own GPU, all three at once
    torchrun --nproc_per_node 2 -m lab.eval quant ... --variants bf16,8bit,4bit   # 2 GPUs: each variant's items shared

- As many processes as variants (or more): variant i is process i's, loaded on its own GPU and run as one process
  runs it; the variants run at once, so the report takes about as long as its slowest variant.
- Fewer: every process loads each variant in turn and the variant's runs are spread over them, batch by batch,
  as `torchrun -m lab.eval` spreads one run (lab/eval/distributed.py).
Either way rank 0 creates (or checks, on --resume) the report and closes it once every process is done; the
report's timing is its slowest process's, with every process's under "ranks". Runs, variants and reports are rows of
the one lab.db, which every process writes (why one file: lab/eval/distributed.py). On a CPU the same code runs
with the processes sharing the cores (CI: two variants on two processes at once).

A variant that cannot load is its row, as in one process. In the shared mode a variant must load in every process
or in none (a host's GPUs alike), since its runs wait for every process.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from lab.eval import quant
from lab.eval.distributed import Group, overall_status
from lab.eval.runner import Runner
from lab.eval.store import RunStore


def run_report(store: RunStore, req: quant.QuantRequest | None, group: Group,
               on_progress: Callable[[quant.QuantProgress], None] | None = None,
               cancel: threading.Event | None = None, resume: str | None = None, *, loader: quant.Loader) -> str:
    """quant.run_report over `group`'s processes; every process returns the report's id."""
    t_start = time.perf_counter()
    begun = group.lead(lambda: quant.start_report(store, req, resume))
    if begun is None:
        return resume
    report_id, req, counts = begun
    n = len(req.variants)
    if group.world_size >= n:  # a variant a process: variant i is rank i's, run as one process runs it
        only, runner = ({group.rank} if group.rank < n else set()), Runner(store)
    else:  # every variant on every process, its runs shared
        only, runner = None, Runner(store, group)
    status, timing = quant.run_variants(store, runner, report_id, req, counts, loader, on_progress, cancel, only)
    parts = group.gather({"status": status, "timing": timing, "gpu": group.gpu, "variants": sorted(only or [])})

    def close() -> None:
        slowest = max(parts, key=lambda p: p["timing"]["runs_s"] + p["timing"]["load_s"])
        overall = overall_status(p["status"] for p in parts)
        timing = {**slowest["timing"], "processes": group.world_size,
                  "mode": "a variant a process" if only is not None else "each variant's items shared",
                  "ranks": [{**p["timing"], "gpu": p["gpu"], "variants": [req.variants[i] for i in p["variants"]]}
                            for p in parts]}
        quant.end_report(store, report_id, overall, timing, time.perf_counter() - t_start, bool(resume))

    group.lead(close)
    return report_id
