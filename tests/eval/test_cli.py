"""`python -m lab.eval` end to end, as the issue's acceptance commands run it."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow  # each test starts `python -m lab.eval` in a subprocess


@pytest.fixture
def runs(tmp_path, data_dir):
    return {"LAB_RUNS_DIR": str(tmp_path / "runs"), "LAB_DATA_DIR": str(data_dir)}


def run_id_of(out: str) -> str:
    line = next(x for x in out.splitlines() if x.startswith("run ") and " saved in " in x)
    return line.split()[1]


@pytest.mark.parametrize("bench, groups", [
    ("mmlu", ["STEM", "humanities", "social sciences", "other"]),
    ("ceval", ["STEM", "Social Science", "Humanities", "Other", "C-Eval Hard"]),
    ("cmmlu", ["STEM", "Humanities", "Social Science", "Other", "China specific"]),
])
def test_acceptance_choice_run_prints_categories_and_writes_a_run(runs, bench, groups):
    r = run_cli("-m", "lab.eval", bench, "--model", "tiny-random", "--limit", "40", "--shots", "5", env=runs)
    assert r.returncode == 0, r.stderr
    for g in groups + ["overall", "micro %", "macro %"]:
        assert g in r.stdout
    assert "40/40" in r.stderr  # the progress bar reached the end
    run_id = run_id_of(r.stdout)
    with sqlite3.connect(os.path.join(runs["LAB_RUNS_DIR"], "lab.db")) as c:
        assert c.execute("SELECT status, n_total FROM runs WHERE id=?", (run_id,)).fetchone() == ("finished", 40)
        assert c.execute("SELECT count(*) FROM samples WHERE run_id=?", (run_id,)).fetchone() == (40,)


def test_acceptance_humaneval_runs_every_program_in_the_sandbox(runs):
    r = run_cli("-m", "lab.eval", "humaneval", "--model", "tiny-random", "--limit", "5", env=runs, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "pass@1" in r.stdout and "5 tasks" in r.stdout
    out = run_cli("-m", "lab.eval", "export", run_id_of(r.stdout), "--out", runs["LAB_RUNS_DIR"], env=runs)
    assert out.returncode == 0, out.stderr
    path = next(p for p in os.listdir(runs["LAB_RUNS_DIR"]) if p.endswith(".samples.jsonl"))
    rows = [json.loads(x) for x in open(os.path.join(runs["LAB_RUNS_DIR"], path))]
    assert len(rows) == 5
    for row in rows:  # each program ran in the sandbox and came back with a verdict
        assert row["detail"]["status"] in ("passed", "failed", "timeout")
        assert row["task_id"].startswith("HumanEval/") and "completion" in row


def test_acceptance_canonical_solutions_score_one(runs, data_dir, tmp_path):
    from lab.eval.data import read_problems

    samples = tmp_path / "canonical.jsonl"
    with open(samples, "w") as f:
        for p in read_problems(data_dir / "humaneval" / "HumanEval.jsonl.gz"):
            f.write(json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n")
    r = run_cli("-m", "lab.eval", "humaneval", "--score", str(samples), env=runs, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "pass@1  1.000" in r.stdout and "164/164" in r.stdout


def test_acceptance_sigkill_half_way_then_resume_equals_an_uninterrupted_run(runs):
    args = ["mmlu", "--model", "tiny-random", "--limit", "160", "--shots", "5", "--batch-size", "4"]
    full = run_cli("-m", "lab.eval", *args, env=runs, timeout=300)
    assert full.returncode == 0, full.stderr

    db = os.path.join(runs["LAB_RUNS_DIR"], "lab.db")
    proc = subprocess.Popen([sys.executable, "-m", "lab.eval", *args], cwd=ROOT, env={**os.environ, **runs},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    victim, written = None, 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        with sqlite3.connect(db) as c:
            row = c.execute("SELECT id FROM runs WHERE status='running'").fetchone()
            if row:
                victim = row[0]
                written = c.execute("SELECT count(*) FROM samples WHERE run_id=?", (victim,)).fetchone()[0]
        if victim and 40 <= written:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert victim and 40 <= written < 160, f"killed at {written}/160"
    with sqlite3.connect(db) as c:
        kept = c.execute("SELECT count(*) FROM samples WHERE run_id=?", (victim,)).fetchone()[0]
    assert kept >= written and kept % 4 == 0  # nothing already written was lost; whole batches only

    listed = run_cli("-m", "lab.eval", "list", env=runs).stdout
    assert "interrupted" in next(line for line in listed.splitlines() if line.startswith(victim))

    resumed = run_cli("-m", "lab.eval", "mmlu", "--resume", victim, env=runs, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    table = lambda out: out[out.index("group"): out.index("unparseable")]  # noqa: E731
    assert table(resumed.stdout) == table(full.stdout)

    cmp = run_cli("-m", "lab.eval", "compare", run_id_of(full.stdout), victim, env=runs)
    assert cmp.returncode == 0 and "0 samples flipped" in cmp.stdout and "160 samples in both runs" in cmp.stdout


def test_list_show_and_errors(runs):
    r = run_cli("-m", "lab.eval", "mmlu", "--model", "tiny-random", "--limit", "4", "--shots", "0", env=runs)
    run_id = run_id_of(r.stdout)
    listed = run_cli("-m", "lab.eval", "list", env=runs)
    assert run_id in listed.stdout and "finished" in listed.stdout and "4/4" in listed.stdout
    shown = run_cli("-m", "lab.eval", "show", run_id, env=runs)
    assert shown.returncode == 0 and "subject" in shown.stdout and '"limit": 4' in shown.stdout
    for args, msg in [(["show", "nope"], "No run 'nope'"),
                      (["mmlu", "--model", "tiny-random", "--subjects", "astrology"], "no subject astrology"),
                      (["ceval", "--model", "tiny-random", "--shots", "7"], "between 0 and 5"),
                      (["humaneval", "--score", "/no/such.jsonl"], "/no/such.jsonl")]:
        bad = run_cli("-m", "lab.eval", *args, env=runs)
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and msg in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
