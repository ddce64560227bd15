"""lab.eval.sandbox: one adversarial property per test. Timeouts are short (1.5 s) to keep the file fast."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from lab.eval.sandbox import ExecResult, Limits, check_completion, protections, run_checks, run_program

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the sandbox needs POSIX (rlimits, process groups)")

PROMPT = 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 1) == -3\n"
SHORT = Limits(timeout_s=1.5)


def add(completion: str, limits: Limits = Limits(timeout_s=5)) -> ExecResult:
    return check_completion(PROMPT, completion, TEST, "add", limits)


def procs_with(token: str) -> list[int]:
    """Host pids whose command line holds `token`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def run_while_watching(source: str, token: str, limits: Limits) -> tuple[ExecResult, bool]:
    """Run `source` in a thread; also report whether a process holding `token` was seen while it ran."""
    box: list[ExecResult] = []
    t = threading.Thread(target=lambda: box.append(run_program(source, limits)))
    t.start()
    seen = False
    while t.is_alive():
        seen = seen or bool(procs_with(token))
        time.sleep(0.05)
    t.join()
    return box[0], seen


def test_a_correct_completion_passes():
    r = add("    return a + b\n")
    assert r.passed and r.status == "passed" and r.exit_code == 0, r


def test_a_failing_assert_fails():
    r = add("    return a - b\n")
    assert r.status == "failed" and r.detail == "AssertionError", r


def test_runs_in_another_process():
    r = run_program("import json\njson.SANDBOX_WAS_HERE = True\nimport os\nprint(os.getpid())")
    assert r.passed and not hasattr(json, "SANDBOX_WAS_HERE")


def test_infinite_loop_times_out_near_the_limit():
    r = run_program("while True:\n    pass\n", SHORT)
    assert r.status == "timeout" and not r.passed and r.detail == "killed after 1.5 s"
    assert 1.5 <= r.duration_s < 3.0


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to find processes")
def test_a_forked_sleeper_dies_with_the_timed_out_program():
    token = f"{secrets.randbelow(10**6) + 10**6}.5"  # `sleep 1234567.5`: a command line no one else has
    source = (f"import os, time\nif os.fork() == 0:\n    os.execvp('sleep', ['sleep', '{token}'])\n"
              "while True:\n    pass\n")
    r, seen = run_while_watching(source, token, SHORT)
    assert seen, "the sleeper never started, so this test proves nothing"
    assert r.status == "timeout"
    time.sleep(0.2)
    assert procs_with(token) == []


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to find processes")
def test_a_descendant_that_leaves_the_process_group_dies_too():
    if not protections()["pid_namespace"]:
        pytest.skip("no PID namespace here: a descendant that calls setsid() escapes the group kill (documented)")
    token = f"{secrets.randbelow(10**6) + 10**6}.25"
    source = (f"import os, time\nif os.fork() == 0:\n    os.setsid()\n    os.execvp('sleep', ['sleep', '{token}'])\n"
              "time.sleep(1.0)\n")
    r, seen = run_while_watching(source, token, Limits(timeout_s=5))
    assert seen and r.passed, r
    time.sleep(0.2)
    assert procs_with(token) == []


def test_memory_bomb_is_stopped():
    r = run_program("x = bytearray(768 * 1024 * 1024)\nx[-1] = 1\n", Limits(timeout_s=5, memory_mb=256))
    assert r.status == "failed" and r.detail == "MemoryError", r


def test_cpu_time_limit_kills_a_busy_program_before_the_wall_clock():
    r = run_program("while True:\n    pass\n", Limits(timeout_s=10, cpu_s=1))
    assert r.status == "failed" and "SIGXCPU" in r.detail and r.duration_s < 5, r


THREADS = """
import threading, time
n = 0
try:
    for _ in range(300):
        threading.Thread(target=time.sleep, args=(3,), daemon=True).start()
        n += 1
except RuntimeError:
    pass
print(n)
"""
FORKS = """
import os, time
n = 0
try:
    for _ in range(300):
        if os.fork() == 0:
            time.sleep(3)
            os._exit(0)
        n += 1
except OSError:
    pass
print(n)
"""


@pytest.mark.parametrize("bomb", [THREADS, FORKS], ids=["threads", "forks"])
def test_thread_and_fork_bombs_stop_at_max_procs(bomb):
    p = protections()
    if not p["proc_limit"]:
        pytest.skip(f"RLIMIT_NPROC is not enforced here: the program runs as {p['runs_as']} (Linux exempts root) "
                    "and the interpreter cannot run as nobody (e.g. a venv under /root)")
    r = run_program(bomb, Limits(timeout_s=10, max_procs=16))
    assert r.passed, r
    assert int(r.stdout) < 16


def test_writing_past_the_file_size_limit_fails():
    r = run_program("with open('big.bin', 'wb') as f:\n    f.write(b'x' * (2 * 1024 * 1024))\n",
                    Limits(timeout_s=5, file_size_mb=1))
    assert r.status == "failed" and "File too large" in r.detail, r


def test_what_the_program_writes_is_gone_even_after_a_timeout():
    token = f"qwen-lab-left-{secrets.token_hex(6)}"
    source = (f"import os\nfor d in (os.getcwd(), '/tmp', '/var/tmp', '/dev/shm'):\n    try:\n"
              f"        open(os.path.join(d, '{token}'), 'w').write('x')\n    except OSError:\n        pass\n"
              "print(os.getcwd(), flush=True)\nwhile True:\n    pass\n")
    r = run_program(source, SHORT)
    cwd = Path(r.stdout.strip())
    assert r.status == "timeout" and cwd.is_absolute() and cwd != Path.cwd()
    assert not (cwd / token).exists()
    assert [d for d in ("/tmp", "/var/tmp", "/dev/shm") if os.path.exists(os.path.join(d, token))] == []


def test_the_environment_holds_no_secrets(monkeypatch):
    for name in ("HF_TOKEN", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "LAB_DATA_DIR"):
        monkeypatch.setenv(name, "s3cr3t-value")
    r = run_program("import json, os\nprint(json.dumps(dict(os.environ)))")
    env = json.loads(r.stdout)
    assert "s3cr3t-value" not in r.stdout
    assert not [k for k in env if any(w in k.upper() for w in ("TOKEN", "KEY", "SECRET", "PASS"))]


def test_stdin_is_empty():
    r = run_program("input()\n", Limits(timeout_s=5))
    assert r.status == "failed" and r.detail.startswith("EOFError"), r


def test_the_network_is_cut():
    if not protections()["network_cut"]:
        pytest.skip("no network namespace on this machine: the sandbox cannot cut the network here (documented)")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
        assert run_program(source, Limits(timeout_s=5, network=True)).passed  # the listener is reachable at all
        r = run_program(source, Limits(timeout_s=5))
    assert r.status == "failed" and ("OSError" in r.detail or "Connection" in r.detail), r


def test_output_is_truncated():
    r = run_program("import sys\nsys.stdout.write('x' * 100000)\nsys.stderr.write('y' * 100000)\n",
                    Limits(timeout_s=5, max_output_bytes=1000))
    assert r.passed
    assert r.stdout == "x" * 1000 + "\n[... 99000 more bytes not kept]"
    assert r.stderr == "y" * 1000 + "\n[... 99000 more bytes not kept]"


@pytest.mark.parametrize("exit_early", [
    "import sys\nsys.exit(0)",
    "raise SystemExit",
    "import os\nos._exit(0)",
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    "import os, sys\nsys.stdout.close()\nos.close(1)\nos.close(2)\nos._exit(0)",
], ids=["sys.exit", "SystemExit", "os._exit", "kill-self", "close-stdout"])
def test_an_early_exit_is_not_a_pass(exit_early):
    r = add("    return a - b\n" + exit_early + "\n")  # leaves before the tests of its wrong answer run
    assert not r.passed and r.status == "failed", r
    assert "before the tests finished" in r.detail, r


def test_printing_a_success_marker_is_not_a_pass():
    r = add("    return 0\nprint('passed')\nprint('{\"passed\": true}')\nimport os\nos._exit(0)\n")
    assert "passed" in r.stdout and not r.passed, r


def test_redefining_check_is_not_a_pass():
    r = add("    return 0\n\ncheck = lambda candidate: None\n\ndef check(candidate):\n    return True\n")
    assert r.status == "failed" and r.detail == "AssertionError", r


def test_replacing_builtins_assertionerror_does_not_silence_asserts():
    r = add("    return 0\nimport builtins\nclass Quiet(Exception):\n    pass\nbuiltins.AssertionError = Quiet\n")
    assert r.status == "failed" and r.detail == "AssertionError", r


def test_a_forked_child_reaching_the_end_is_not_a_pass():
    # The program's own process leaves at once; its forked child runs the tests (which pass) to the end.
    r = add("    return a + b\nimport os\nif os.fork() != 0:\n    os._exit(0)\n")
    assert not r.passed, r


def test_main_guarded_demo_code_does_not_run():
    r = add("    return a + b\n\nif __name__ == '__main__':\n    print(add(int(input()), 1))\n")
    assert r.passed, r


def test_run_checks_keeps_order_and_reports_each_job_once_in_the_calling_thread():
    bodies = ["    return a + b\n", "    return 0\n", "    return b + a\n", "    import sys; sys.exit(0)\n",
              "    return a + b + 0\n", "    return None\n"]
    calls: list[tuple[int, bool, int]] = []
    results = run_checks([(PROMPT, b, TEST, "add") for b in bodies], Limits(timeout_s=5), workers=3,
                         on_result=lambda i, r: calls.append((i, r.passed, threading.get_ident())))
    assert [r.passed for r in results] == [True, False, True, False, True, False]
    assert sorted(i for i, _, _ in calls) == list(range(len(bodies)))
    assert all(passed == results[i].passed for i, passed, _ in calls)
    assert {ident for _, _, ident in calls} == {threading.get_ident()}


def test_cancel_stops_launching_new_jobs():
    cancel = threading.Event()
    jobs = [(PROMPT, "    return a + b\n", TEST, "add")] * 6
    results = run_checks(jobs, Limits(timeout_s=5), workers=1, on_result=lambda i, r: cancel.set(), cancel=cancel)
    assert results[0] is not None and results[0].passed
    assert results[1:] == [None] * 5


def test_protections_report_what_is_in_force():
    p = protections()
    assert p["own_process"] is True and p["seccomp"] is False and p["isolation"] in ("bwrap", "namespaces", "none")
    assert p["judge"].startswith("own process")
    if shutil.which("bwrap") and sys.platform.startswith("linux") and os.environ.get("LAB_REQUIRE_BWRAP"):
        assert p["isolation"] == "bwrap" and p["filesystem"] == "private (bubblewrap)", p
    assert all(isinstance(p[k], bool) for k in ("network_cut", "pid_namespace", "uid_drop", "proc_limit"))
    if os.geteuid() == 0 and not p["uid_drop"]:
        assert p["proc_limit"] is False and p["runs_as"] == "root"
