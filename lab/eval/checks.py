"""Every program checked ends with a verdict: lab.eval.sandbox's run_checks, with no one job able to end the rest.

    results = check_all(jobs, limits, workers=8, on_result=save, cancel=cancel)
    # one ExecResult per job, in job order; None only for a job that `cancel` kept from starting

What the sandbox returns is taken as it is when it is a well-formed result. Anything else becomes an
"error" verdict with a one-line reason, and the other jobs go on:
- a job whose check raises (run_checks then gives up on the whole list): the jobs left without a result
  are checked again one job per run_checks call, so the one that raises is found and marked, and the
  others still get their own verdicts;
- a result that is not an ExecResult, or has a status outside passed/failed/timeout/error, or fields of
  the wrong type; a job run_checks returned nothing for although nothing cancelled it.

What `on_result` raises (the caller's own failure, such as a store that cannot write) is not a job's fault:
it ends check_all.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Sequence

from lab.eval import sandbox

STATUSES = ("passed", "failed", "timeout", "error")
REASON_CHARS = 300


def error(reason: str) -> sandbox.ExecResult:
    return sandbox.ExecResult("error", one_line(reason), None, "", "", 0.0)


def one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 1] + "…"


def raised(e: BaseException) -> sandbox.ExecResult:
    what = one_line(str(e))
    return error(f"the check raised {type(e).__name__}" + (f": {what}" if what else ""))


def verdict(r) -> sandbox.ExecResult:
    """`r` if it is a well-formed result; else an error verdict saying what was wrong with it."""
    if not isinstance(r, sandbox.ExecResult):
        return error(f"the sandbox returned {type(r).__name__}, not a result")
    if r.status not in STATUSES:
        return error(f"the sandbox returned the unknown status {one_line(repr(r.status))}")
    if not isinstance(r.detail, str) or not all(isinstance(x, str) for x in (r.stdout, r.stderr)):
        return error("the sandbox returned a result whose detail or output is not text")
    if r.exit_code is not None and not isinstance(r.exit_code, int):
        return error(f"the sandbox returned the exit code {one_line(repr(r.exit_code))}")
    if not isinstance(r.duration_s, (int, float)):
        return error(f"the sandbox returned the duration {one_line(repr(r.duration_s))}")
    if "\n" in r.detail or "\r" in r.detail:  # a reason is one line wherever it is shown
        return sandbox.ExecResult(r.status, one_line(r.detail), r.exit_code, r.stdout, r.stderr, r.duration_s)
    return r


class _CallerFailed(Exception):
    """What on_result raised, carried through run_checks so that it is not taken for a job's failure."""


def check_all(jobs: Sequence[tuple[str, str, str, str]], limits: sandbox.Limits, workers: int | None = None,
              on_result: Callable[[int, sandbox.ExecResult], None] | None = None,
              cancel: threading.Event | None = None) -> list[sandbox.ExecResult | None]:
    """sandbox.run_checks' contract (job order, on_result in this thread as each finishes, None for a job
    cancel kept from starting), except that every other job ends with a verdict (module docstring)."""
    cancel = cancel or threading.Event()
    results: list[sandbox.ExecResult | None] = [None] * len(jobs)

    def take(i: int, r) -> None:
        if results[i] is not None:  # a result delivered twice counts once
            return
        results[i] = r = verdict(r)
        if on_result is not None:
            try:
                on_result(i, r)
            except Exception as e:
                raise _CallerFailed() from e

    try:
        try:
            returned = sandbox.run_checks(jobs, limits, workers=workers, on_result=take, cancel=cancel)
        except _CallerFailed:
            raise
        except (Exception, SystemExit):  # one job's check raised; run_checks dropped the results not handed over
            _one_by_one([i for i, r in enumerate(results) if r is None], jobs, limits, workers, take, cancel)
            returned = results
        if not cancel.is_set():
            returned = list(returned) if isinstance(returned, (list, tuple)) else []
            for i in range(len(jobs)):
                if results[i] is None:
                    r = returned[i] if i < len(returned) else None
                    take(i, r if r is not None else error("the sandbox returned no result for this program"))
    except _CallerFailed as e:
        raise e.__cause__ from None
    return results


def _one_by_one(todo: list[int], jobs, limits, workers, take, cancel: threading.Event) -> None:
    def one(i: int) -> sandbox.ExecResult | None:
        if cancel.is_set():
            return None
        try:
            return sandbox.run_checks([jobs[i]], limits, workers=1, cancel=cancel)[0]
        except (Exception, SystemExit) as e:
            return raised(e)

    if not todo:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(len(todo), workers or os.cpu_count() or 1)), thread_name_prefix="recheck") as pool:
        futures = {pool.submit(one, i): i for i in todo}
        for f in as_completed(futures):
            r = f.result()
            if r is not None:
                take(futures[f], r)
