"""`torchrun --nproc_per_node 2 -m lab.eval ...` on the CPU (gloo): one run whose samples equal one process's, each
rank having scored its share; `accelerate launch` the same; a kill -9 part way resumed with another number of
processes; HumanEval's sandbox under ranks; one sentence for what cannot be spread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil  # accelerate's dependency
import pytest

from lab.errors import LabError
from lab.eval.distributed import SOLO, Group
from lab.eval.store import RunStore
from tests.conftest import ROOT, free_port

SAME = ("key", "position", "subject", "prompt", "output", "extracted", "gold", "correct")


def record(s) -> list:
    """What a sample says, without its timings (the sandbox's run_s is the program's wall time)."""
    return [getattr(s, f) for f in SAME] + [{k: v for k, v in s.detail.items() if k != "run_s"}]


def launch(launcher: list[str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher, "-m", "lab.eval", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def torchrun(n: int) -> list[str]:
    # --standalone: a rendezvous on a free port, so runs of several test sessions at once do not meet
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]


def run_id(stdout: str) -> str:
    return next(x for x in stdout.splitlines() if x.startswith("run ") and " saved in " in x).split()[1]


def one_process(capsys, *args: str) -> str:
    from lab.eval.__main__ import main

    assert main(list(args)) == 0
    return run_id(capsys.readouterr().out)


def same_samples(store: RunStore, a: str, b: str) -> None:
    sa, sb = store.samples(a), store.samples(b)
    assert len(sa) == len(sb) == store.get(a).n_total
    differ = [x.key for x, y in zip(sa, sb) if record(x) != record(y)]
    assert not differ, f"{len(differ)} of {len(sa)} samples differ: {differ[:5]}"
    assert store.get(a).summary == store.get(b).summary


def test_two_processes_make_one_run_equal_to_one_process(data_dir, tmp_path, capsys):
    flags = ["mmlu", "--model", "tiny-random", "--limit", "200", "--runs-dir", str(tmp_path), "--data-dir",
             str(data_dir)]
    out = launch(torchrun(2), *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count(" saved in ") == 1 and "2 processes, each with its own replica" in out.stderr
    spread = run_id(out.stdout)
    store = RunStore.open(tmp_path)
    assert [r.id for r in store.runs()] == [spread]  # ONE run, made by rank 0, written by both
    single = one_process(capsys, *flags)
    same_samples(store, spread, single)
    run = store.get(spread)
    (session,) = run.params["processes"]
    assert session["world_size"] == 2 and sum(session["scored"]) == 200
    assert all(80 <= n <= 120 for n in session["scored"]), session  # 25 batches of 8: 13 and 12
    assert session["statuses"] == ["finished", "finished"] and run.status == "finished"
    assert "processes" not in store.get(single).params
    # compare sees two equal runs
    from lab.eval.__main__ import main

    assert main(["compare", spread, single, "--runs-dir", str(tmp_path)]) == 0
    assert "+0.0" in capsys.readouterr().out


def test_accelerate_launch_is_the_same_launcher(data_dir, tmp_path, capsys):
    """`accelerate launch --multi_gpu` starts torchrun's processes with its environment, on a host without GPUs
    too (`--cpu --num_processes 2` alone needs mpirun, README)."""
    flags = ["mmlu", "--model", "tiny-random", "--limit", "40", "--runs-dir", str(tmp_path), "--data-dir",
             str(data_dir)]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", str(free_port())]
    out = launch(accelerate, *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    spread = run_id(out.stdout)
    store = RunStore.open(tmp_path)
    assert store.get(spread).params["processes"][0]["scored"] == [24, 16]
    same_samples(store, spread, one_process(capsys, *flags))


@pytest.mark.slow
def test_a_killed_run_resumes_with_another_number_of_processes(data_dir, tmp_path, capsys):
    flags = ["mmlu", "--mode", "gen", "--model", "tiny-random", "--limit", "40", "--max-new-tokens", "24",
             "--batch-size", "2", "--runs-dir", str(tmp_path), "--data-dir", str(data_dir)]
    proc = subprocess.Popen([*torchrun(2), "-m", "lab.eval", *flags], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    store = RunStore.open(tmp_path)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        runs = store.runs()
        if runs and len(store.done_keys(runs[0].id)) >= 8:
            break
        time.sleep(0.2)
    # the launcher and both ranks at once (torchrun starts each rank in a session of its own)
    for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        p.send_signal(signal.SIGKILL)
    proc.wait()
    (killed,) = store.runs()
    done = len(store.done_keys(killed.id))
    assert 8 <= done < 40, "the run ended before the kill; give it more batches"
    deadline = time.monotonic() + 10
    while store.get(killed.id).state != "interrupted" and time.monotonic() < deadline:
        time.sleep(0.1)  # rank 0's process is reaped
    out = launch(torchrun(3), "mmlu", "--resume", killed.id, "--runs-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    run = store.get(killed.id)
    assert run.status == "finished"
    (session,) = run.params["processes"]  # the killed session never reached its end
    assert session["world_size"] == 3 and sum(session["scored"]) == 40 - done
    same_samples(store, killed.id, one_process(capsys, *flags))


@pytest.mark.slow
def test_humaneval_programs_are_judged_in_each_ranks_sandbox(data_dir, tmp_path, capsys):
    flags = ["humaneval", "--model", "tiny-random", "--limit", "6", "--max-new-tokens", "16", "--batch-size", "2",
             "--runs-dir", str(tmp_path), "--data-dir", str(data_dir)]
    out = launch(torchrun(2), *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    spread = run_id(out.stdout)
    store = RunStore.open(tmp_path)
    assert store.get(spread).params["processes"][0]["scored"] == [4, 2]
    assert all(s.detail.get("status") for s in store.samples(spread))  # every program got the sandbox's verdict
    same_samples(store, spread, one_process(capsys, *flags))


def test_a_user_error_ends_every_process_with_the_same_sentence(data_dir, tmp_path, capsys):
    """Rank 0 checks a resume; the others raise its sentence, so no process is left waiting."""
    finished = one_process(capsys, "mmlu", "--model", "tiny-random", "--limit", "8", "--runs-dir", str(tmp_path),
                           "--data-dir", str(data_dir))
    store = RunStore.open(tmp_path)
    store.set_status(finished, "cancelled")
    with store.conn() as c:
        c.execute("UPDATE runs SET model='Qwen2.5-7B-Instruct' WHERE id=?", (finished,))
    out = launch(torchrun(2), "mmlu", "--resume", finished, "--model", "tiny-random", "--runs-dir", str(tmp_path),
                 timeout=120)
    assert out.returncode != 0
    sentence = f"error: Run {finished} was made with Qwen2.5-7B-Instruct (fp32); resume it with the same model"
    assert out.stderr.count(sentence) == 2, out.stderr[-3000:]


def test_one_process_and_one_host(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert Group.from_env() is SOLO and not SOLO.distributed
    assert SOLO.share([0, 1, 2]) == [0, 1, 2] and SOLO.gather(5) == [5] and SOLO.lead(lambda: 7) == 7
    assert SOLO.sandbox_workers() is None
    assert Group(rank=1, world_size=3).share(list(range(8))) == [1, 4, 7]
    two = Group(rank=0, world_size=2, local_world_size=2)
    assert two.sandbox_workers() == max(1, (os.cpu_count() or 1) // 2)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two hosts of two processes
    with pytest.raises(LabError, match=r"processes of one host .* --nnodes 1, or an OpenAI-compatible deployment"):
        Group.from_env()


def report_runs(store: RunStore, report_id: str) -> dict[str, str]:
    from lab.eval.store import ReportStore

    return {v: by["mmlu:mini"] for v, by in ReportStore(store.db).report_runs(report_id).items()}


QUANT = ["quant", "--model", "tiny-random", "--benchmarks", "mmlu:mini", "--limit", "16"]


def test_two_variants_run_at_once_on_two_processes_into_one_report(data_dir, tmp_path, capsys):
    flags = [*QUANT, "--variants", "fp32,bf16", "--runs-dir", str(tmp_path), "--data-dir", str(data_dir)]
    out = launch(torchrun(2), *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("report quant-") == 2  # the report's text and where it is saved: rank 0 alone
    from lab.eval import quant
    from lab.eval.__main__ import main

    store = RunStore.open(tmp_path)
    (spread,) = [r["id"] for r in quant.list_reports(store)]
    timing = quant.load_report(store, spread)["timing"]
    assert timing["mode"] == "a variant a process"
    assert [r["variants"] for r in timing["ranks"]] == [["fp32"], ["bf16"]]
    runs = {v: store.get(r) for v, r in report_runs(store, spread).items()}
    assert set(runs) == {"fp32", "bf16"}, quant.load_report(store, spread)["variants"]
    assert runs["fp32"].owner != runs["bf16"].owner  # two processes, started together, each with its variant
    assert all(r["load_s"] > 0 and r["runs_s"] > 0 for r in timing["ranks"])
    assert main([*flags]) == 0  # the same report from one process, a variant after the other
    capsys.readouterr()
    single = next(r["id"] for r in quant.list_reports(store) if r["id"] != spread)
    for variant, run in report_runs(store, single).items():
        same_samples(store, report_runs(store, spread)[variant], run)
    a, b = quant.load_report(store, spread), quant.load_report(store, single)
    assert [v["results"]["mmlu:mini"]["accuracy"] for v in a["variants"]] == \
        [v["results"]["mmlu:mini"]["accuracy"] for v in b["variants"]]


@pytest.mark.slow
def test_more_variants_than_processes_share_each_variants_items(data_dir, tmp_path, capsys):
    flags = [*QUANT, "--variants", "fp32,bf16,fp16", "--runs-dir", str(tmp_path), "--data-dir", str(data_dir)]
    out = launch(torchrun(2), *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    from lab.eval import quant
    from lab.eval.__main__ import main

    store = RunStore.open(tmp_path)
    (spread,) = [r["id"] for r in quant.list_reports(store)]
    assert quant.load_report(store, spread)["timing"]["mode"] == "each variant's items shared"
    runs = report_runs(store, spread)
    assert all(store.get(r).params["processes"][0]["scored"] == [8, 8] for r in runs.values())
    assert main([*QUANT, "--variants", "fp32,bf16", *flags[-4:]]) == 0
    capsys.readouterr()
    single = next(r["id"] for r in quant.list_reports(store) if r["id"] != spread)
    for variant, run in report_runs(store, single).items():
        same_samples(store, runs[variant], run)
