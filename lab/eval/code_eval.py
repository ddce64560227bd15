"""Hugging Face `code_eval`'s contract, judged in lab.eval.sandbox instead of run in this process.

    from lab.eval.code_eval import compute
    pass_at_k, results = compute(predictions=[[program, ...], ...], references=[test, ...], k=[1, 10])
    pass_at_k                      # {"pass@1": 0.5, "pass@10": 0.9}, for each k every task has samples for
    results[0]                     # [(0, {"task_id": 0, "completion_id": 0, "passed": True, "result": "passed",
                                   #       "status": "passed"}), ...], by completion id

The evaluate metric `lab/eval/metrics/sandboxed_code_eval` is this function behind `evaluate.load`.

The shapes are code_eval's: a prediction is a list of whole programs (prompt + completion), a reference is
the test code ending in its call `check(entry_point)`. The sandbox judges differently from code_eval, which
runs program + test as one script: here the program runs in a worker and the test in a judge that calls
the entry point through a proxy (lab/eval/sandbox). So each reference is split: the name in its final
`check(NAME)` is the entry point, and the test is the reference without that call. A reference that ends
in no such call (code_eval's own example, `assert add(2,3)==5`) names exactly one function it does not
define itself: that is the entry point, and the whole reference is the test.

Prompt helpers. A few benchmark tests call a function of the problem's prompt, not the one under test
(HumanEval/32's `poly`, /38's `encode_cyclic`, /50's `encode_shift`). code_eval finds it in the program,
but here the judge never runs the program's code (else a program could redefine the helper the test
trusts): the judge knows only the reference and, when given, the trusted prompt. So `prompts=[prompt, ...]`,
one per reference, gives the judge each task's prompt to run for its imports and helpers, as
`python -m lab.eval humaneval --score` does; a program that starts with its prompt then runs as that
prompt + the rest, and one that does not runs after the prompt, its own definitions replacing the
prompt's. Without `prompts`, a reference that uses a name that neither it nor Python's builtins define
ends the call with one ValueError naming it, instead of failing every program of that task in silence.

`result` is in code_eval's words ("passed", "timed out", "failed: <reason>", and "error: <reason>" where
the sandbox itself could not judge); `status` is the sandbox's ("passed", "failed", "timeout", "error").
pass@k is lab.eval.kinds.code's estimator, the one every run of the lab reports.
"""

from __future__ import annotations

import ast
import builtins
from typing import Sequence

from lab.eval import sandbox
from lab.eval.kinds.code import pass_at_k_table

BUILTINS = frozenset(dir(builtins))
WORDS = {"passed": "passed", "timeout": "timed out"}  # the sandbox's status -> code_eval's result


def compute(predictions: Sequence[Sequence[str]], references: Sequence[str], k: int | Sequence[int] = (1, 10, 100),
            num_workers: int = 4, timeout: float = 3.0, prompts: Sequence[str] | None = None,
            limits: sandbox.Limits | None = None) -> tuple[dict[str, float], dict[int, list[tuple[int, dict]]]]:
    """code_eval's compute: (pass@k for each k that every task has samples for, per-candidate results).
    `limits` (optional) replaces the sandbox's defaults; its timeout is then `timeout`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; give one list of "
                         "candidate programs per reference.")
    if prompts is not None and len(prompts) != len(references):
        raise ValueError(f"{len(prompts)} prompts but {len(references)} references; give one prompt per reference.")
    ks = [k] if isinstance(k, int) else list(k)
    jobs, owners = [], []
    for task, (candidates, reference) in enumerate(zip(predictions, references)):
        prompt = None if prompts is None else prompts[task]
        test, entry_point = split_reference(reference, task, helpers_from_prompt=prompt is not None)
        for completion_id, program in enumerate(candidates):
            jobs.append(job(program, test, entry_point, prompt))
            owners.append((task, completion_id))
    base = limits or sandbox.Limits()
    verdicts = sandbox.run_checks(jobs, sandbox.Limits(**{**vars(base), "timeout_s": float(timeout)}),
                                  workers=num_workers)
    results: dict[int, list[tuple[int, dict]]] = {}
    for (task, completion_id), r in zip(owners, verdicts):
        results.setdefault(task, []).append((completion_id, {
            "task_id": task, "passed": r.passed, "result": WORDS.get(r.status, f"{r.status}: {r.detail}"),
            "completion_id": completion_id, "status": r.status}))
    counts = {task: (len(rows), sum(row["passed"] for _, row in rows)) for task, rows in results.items()}
    return pass_at_k_table(counts, ks), results


def job(program: str, test: str, entry_point: str, prompt: str | None) -> tuple[str, str, str, str]:
    """The sandbox's (prompt, completion, test, entry_point) for one whole program (module docstring)."""
    if prompt is None:
        return "", program, test, entry_point
    if program.startswith(prompt):
        return prompt, program[len(prompt):], test, entry_point
    return prompt, "\n" + program, test, entry_point


def split_reference(reference: str, task: int = 0, helpers_from_prompt: bool = False) -> tuple[str, str]:
    """(the test, the entry point) of a code_eval reference; the rule is in the module docstring."""
    # compile() reads \r\n and \r as \n; so does this, so line numbers and offsets below agree with ast's.
    source = reference.replace("\r\n", "\n").replace("\r", "\n")
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"Reference {task} is not valid Python ({e.msg}, line {e.lineno}).") from None
    last = tree.body[-1] if tree.body else None
    if (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call) and isinstance(last.value.func, ast.Name)
            and last.value.func.id == "check" and len(last.value.args) == 1 and not last.value.keywords
            and isinstance(last.value.args[0], ast.Name)):
        entry_point = last.value.args[0].id
        lines = source.splitlines(keepends=True)
        cut = lines[last.lineno - 1].encode("utf-8")[:last.col_offset].decode("utf-8")  # col_offset counts bytes
        test = "".join(lines[:last.lineno - 1]) + cut
        unknown = free_names(ast.parse(test)) - {entry_point}
        if unknown and not helpers_from_prompt:
            raise ValueError(f"Reference {task} uses {', '.join(sorted(unknown))}, which it does not define; the "
                             "judge never runs a candidate's code, so give the benchmark prompt that defines it "
                             "(prompts=[...]) or define it in the reference.")
        return test, entry_point
    called = free_names(tree)
    if len(called) != 1:
        what = f"uses {', '.join(sorted(called))}" if called else "calls no function of the program"
        raise ValueError(f"Reference {task} ends in no check(NAME) call and {what}; the judge calls one function "
                         "of a program: end the reference with check(NAME), or test one function.")
    entry_point = called.pop()
    # Run when the judge calls check(proxy), with the proxy already bound to the entry point's name; exec keeps
    # the reference's text exactly as written (indenting it would change its multi-line strings).
    return (f"def check(candidate):\n    exec(compile({source!r}, '<reference>', 'exec', dont_inherit=True), "
            "globals())\n"), entry_point


def free_names(tree: ast.AST) -> set[str]:
    """Names the code reads that it binds nowhere (in any scope) and that are not builtins: a deliberate
    over-approximation of "bound", so a name reported here is really undefined when the code runs alone."""
    read, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(a.name == "*" for a in node.names):
                return set()  # a star import may bind anything: nothing can be called undefined
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound |= set(node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
    return read - bound - BUILTINS
