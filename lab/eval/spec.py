"""Benchmark specs: the YAML files in `evals/` (LAB_EVALS_DIR overrides the folder) read into dataclasses.

    from lab.eval.spec import load_spec
    spec = load_spec("mmlu")
    spec.category_of("anatomy")     # "other"
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lab.errors import LabError

BENCHMARKS = ("mmlu", "ceval", "humaneval")


def evals_dir() -> Path:
    if os.environ.get("LAB_EVALS_DIR"):
        return Path(os.environ["LAB_EVALS_DIR"])
    return Path(__file__).resolve().parents[2] / "evals"


@dataclass
class Subset:
    name: str
    description: str = ""
    per_subject: int | None = None  # questions drawn from each subject (seeded)
    subjects: list[str] | None = None
    categories: list[str] | None = None
    limit: int | None = None  # items drawn from the whole benchmark (seeded)
    tasks: tuple[int, int] | None = None  # HumanEval: first and last problem number


@dataclass
class Spec:
    name: str
    title: str
    kind: str  # "choice" or "code"
    lang: str
    split: str
    hub: dict
    local: dict
    fewshot_split: str | None = None
    default_shots: int = 0
    default_mode: str = "logprob"
    choices: list[str] = field(default_factory=lambda: ["A", "B", "C", "D"])
    categories: dict[str, list[str]] = field(default_factory=dict)  # category -> subjects
    category_order: list[str] = field(default_factory=list)  # how reports list the categories
    extra_groups: dict[str, list[str]] = field(default_factory=dict)  # e.g. C-Eval Hard
    subsets: dict[str, Subset] = field(default_factory=dict)
    generation: dict = field(default_factory=dict)
    package: str | None = None
    path: Path | None = None

    @property
    def modes(self) -> tuple[str, ...]:
        return ("logprob", "gen") if self.kind == "choice" else ("instruct", "completion")

    def category_of(self, subject: str) -> str | None:
        for cat, subjects in self.categories.items():
            if subject in subjects:
                return cat
        return None

    def subset(self, name: str) -> Subset:
        if name not in self.subsets:
            known = ", ".join(self.subsets) or "none"
            raise LabError(f"{self.name} has no subset '{name}'; its subsets are: {known}.")
        return self.subsets[name]


def load_spec(name: str) -> Spec:
    if name not in BENCHMARKS:
        raise LabError(f"Unknown benchmark '{name}'; choose one of {', '.join(BENCHMARKS)}.")
    path = evals_dir() / f"{name}.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(f"The benchmark spec {path} is missing; run from a checkout or set LAB_EVALS_DIR.") from None
    except yaml.YAMLError as e:
        raise LabError(f"The benchmark spec {path} is not valid YAML ({str(e).splitlines()[0]}).") from None
    try:
        subsets = {}
        for key, s in (raw.pop("subsets", None) or {}).items():
            s = dict(s)
            if "tasks" in s:
                s["tasks"] = tuple(s["tasks"])
            subsets[key] = Subset(name=key, **s)
        return Spec(**raw, subsets=subsets, path=path)
    except TypeError as e:
        raise LabError(f"The benchmark spec {path} has a field the runner does not know ({e}).") from None
