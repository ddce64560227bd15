"""What a run is: the request (stored with the run, enough to resume it), the plan it becomes (items with
their prompts, a pure function of the request and the data), and the seeded selections plans are made of.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields

from lab.eval.spec import Spec
from lab.interface import SamplingParams

DEFAULT_SEED = 1234


@dataclass
class EvalRequest:
    """Everything that shapes a run's result; stored with the run and enough to resume it."""

    benchmark: str
    mode: str | None = None  # choice: logprob (default) or gen; code: instruct (default) or completion
    shots: int | None = None  # choice only; default: the spec's
    limit: int | None = None
    subjects: list[str] | None = None  # choice: subject names; code: task numbers or ids
    subset: str | None = None
    seed: int = DEFAULT_SEED
    batch_size: int | None = None  # None: 8 on a CPU; on CUDA sized by free memory (saved in slices of 1024/256)
    data_dir: str | None = None
    samples_per_task: int = 1  # code: n, for pass@k
    temperature: float = 0.0  # code and gen: 0 = greedy
    max_new_tokens: int | None = None  # default: the spec's (code) or 256 (gen)
    timeout_s: float | None = None  # code: per program; default: the spec's
    workers: int | None = None  # code: parallel sandbox processes; default: CPU count
    # chat modes (the Compare tab's variants): the system message ("" drops it) and a template whose {input}
    # slot wraps each user message the benchmark builds; None keeps the spec's prompts
    system: str | None = None
    template: str | None = None
    prompt_template: str | None = None  # choice: one of the spec's named `templates` (--template); None: `prompts`

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
    payload: object  # what the kind scores against: a Question, or (Problem, sample number)
    prompt: str | list = ""  # raw prompt text, or chat messages
    position: int = 0  # place in the run's item list


@dataclass
class Plan:
    spec: Spec
    request: EvalRequest
    mode: str
    shots: int | None  # None: the kind takes no shots
    items: list[Item]
    data_source: str
    groups: dict[str, list[str]] = field(default_factory=dict)  # category -> subjects, for the summary


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


def customize(messages: list[dict], req: EvalRequest) -> list[dict]:
    """The request's system prompt (set, replaced, or dropped when "") and template around each user message."""
    if req.system is not None:
        messages = [m for m in messages if m["role"] != "system"]
        messages = ([{"role": "system", "content": req.system}] if req.system else []) + messages
    if req.template is not None:  # str.replace: questions and code are full of braces
        messages = [{**m, "content": req.template.replace("{input}", m["content"])} if m["role"] == "user" else m
                    for m in messages]
    return messages


def sample_within(rows: list, k: int, seed: int, salt: str, index=lambda r: r.index) -> list:
    """k rows of one subject, drawn with the seed; kept in file order."""
    if k >= len(rows):
        return rows
    picked = set(random.Random(f"{seed}:{salt}").sample(range(len(rows)), k))
    return [r for r in rows if index(r) in picked]


def spread(pools: dict[str, list], limit: int, seed: int) -> list:
    """`limit` rows spread over subjects: subjects in a seeded order take turns giving one seeded-random row
    each. The result is kept in subject and file order."""
    rng = random.Random(seed)
    order = sorted(pools)
    rng.shuffle(order)
    queues = {s: rng.sample(pools[s], len(pools[s])) for s in order}
    picked: list = []
    while len(picked) < limit and any(queues.values()):
        for s in order:
            if queues[s] and len(picked) < limit:
                picked.append(queues[s].pop())
    return sorted(picked, key=lambda q: (q.subject, q.index))


def numbered(items: list[Item]) -> list[Item]:
    for i, it in enumerate(items):
        it.position = i
    return items


def eval_sampling(req: EvalRequest, seed: int, default_new: int) -> SamplingParams:
    """Greedy (or the request's temperature with top-p 0.95), no penalty: what evaluations generate with."""
    new = req.max_new_tokens or default_new
    if req.temperature > 0:
        return SamplingParams(temperature=req.temperature, top_p=0.95, top_k=0, repetition_penalty=1.0,
                              max_new_tokens=new, seed=seed)
    return SamplingParams(temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=new, seed=seed)
