"""The quantization report: its statistics against hand-computed values, the CLI's acceptance command end to end,
a SIGKILL half-way and --resume giving the same report, a variant that cannot load, and self-contained exports."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from math import comb

import numpy as np
import pytest

from lab.errors import LabError
from lab.eval import stats
from lab.eval.quant import QuantRequest, check, parse_variant
from lab.eval.runner import Runner
from lab.eval.store import RunStore
from tests.conftest import ROOT, run_cli

ACCEPT = ["quant", "--model", "tiny-random", "--variants", "fp32,bf16", "--benchmarks", "mmlu:mini,humaneval",
          "--limit", "20"]


# ---- statistics -----------------------------------------------------------------------------------
def test_mcnemar_exact_p_is_the_two_sided_binomial_tail_of_the_discordant_pairs():
    # b=1, c=6: P(X<=1) for X ~ Bin(7, 1/2) is (1 + 7) / 128; two-sided doubles it
    assert stats.mcnemar_exact(1, 6) == pytest.approx(2 * 8 / 128)
    # b=2, c=10: 2 * (C(12,0)+C(12,1)+C(12,2)) / 2^12
    assert stats.mcnemar_exact(2, 10) == pytest.approx(2 * (1 + 12 + comb(12, 2)) / 4096)
    assert stats.mcnemar_exact(5, 5) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0


def test_discordant_pairs_and_delta_from_a_small_table():
    ref = [1, 1, 1, 0, 0, 1, 0, 1]
    oth = [1, 0, 0, 0, 1, 1, 0, 1]
    assert stats.discordant(ref, oth) == (2, 1)
    r = stats.paired(ref, oth, seed=0)
    assert r["delta"] == pytest.approx(-1 / 8) and (r["lost"], r["gained"]) == (2, 1)
    assert r["p_mcnemar"] == pytest.approx(1.0)  # 2 vs 1 of 3: as even as 3 can be split
    lo, hi = r["delta_ci"]
    assert lo <= -1 / 8 <= hi and r["within_noise"]


def test_wilson_interval_by_hand():
    z = 1.959963984540054
    n, k = 20, 3
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    lo, hi = stats.wilson(k, n)
    assert (lo, hi) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(10, 10)[1] == pytest.approx(1.0)
    assert stats.wilson(0, 0) is None


def test_identical_variants_differ_by_zero_with_p_one():
    scores = [True, False, True, True, False] * 8
    r = stats.paired(scores, scores, seed=1)
    assert r["delta"] == 0 and r["delta_ci"] == [0, 0] and r["p_mcnemar"] == 1.0 and r["within_noise"]


def test_bootstrap_is_seeded_and_its_interval_covers_the_true_difference():
    rng = np.random.default_rng(7)
    n = 2000
    ref = rng.random(n) < 0.6
    flip_down = rng.random(n) < 0.10  # the variant loses 10% of the reference's right answers ...
    flip_up = rng.random(n) < 0.02  # ... and gains a few
    oth = np.where(ref, ~flip_down, flip_up)
    true = oth.mean() - ref.mean()
    d1, ci1 = stats.paired_bootstrap(ref, oth, seed=3)
    d2, ci2 = stats.paired_bootstrap(ref, oth, seed=3)
    assert (d1, ci1) == (d2, ci2)  # seeded: the same interval every time
    assert d1 == pytest.approx(true) and ci1[0] < true < ci1[1]
    assert ci1[1] < 0  # a real loss of ~4 points on 2,000 items is outside noise
    assert stats.paired_bootstrap(ref, oth, seed=4)[1] != ci1  # another seed, other resamples
    # the interval is close to the normal approximation's for paired proportions
    b, c = stats.discordant(ref, oth)
    se = ((b + c) / n - ((c - b) / n) ** 2) ** 0.5 / n ** 0.5
    assert ci1 == pytest.approx((true - 1.96 * se, true + 1.96 * se), abs=0.004)


# ---- requests ---------------------------------------------------------------------------------------
def test_variants_parse_and_bad_ones_are_one_sentence():
    assert parse_variant("4bit-nodq").quant == "4bit" and not parse_variant("4bit-nodq").double_quant
    assert parse_variant("gguf=/m/q4.gguf").gguf == "/m/q4.gguf"
    with pytest.raises(LabError, match="Unknown variant 'int3'"):
        parse_variant("int3")


def test_load_kwargs_pass_a_variant_and_refuse_a_gguf_the_loader_cannot_take(tmp_path):
    from lab.eval.quant import load_kwargs

    req = QuantRequest("tiny-random", ["bf16", "4bit-nodq"], ["mmlu"], device="cpu")
    assert load_kwargs(req, parse_variant("4bit-nodq"), {"name", "quant"}) == dict(
        name="tiny-random", quant="4bit", device="cpu", double_quant=False, context=None)
    fake = tmp_path / "m.gguf"
    with pytest.raises(LabError, match="There is no GGUF file"):
        load_kwargs(req, parse_variant(f"gguf={fake}"), {"gguf_file"})
    fake.write_bytes(b"GGUF")
    with pytest.raises(LabError, match="cannot load GGUF files yet"):
        load_kwargs(req, parse_variant(f"gguf={fake}"), {"name", "quant"})
    kw = load_kwargs(req, parse_variant(f"gguf={fake}"), {"gguf_file"})
    assert kw["gguf_file"] == str(fake.resolve()) and kw["name"] is None and kw["quant"] == "auto"


def test_a_request_is_checked_before_any_model_loads(tmp_path, data_dir):
    runner = Runner(RunStore.open(tmp_path))
    ok = QuantRequest("tiny-random", ["fp32", "bf16"], ["mmlu:mini", "humaneval"], limit=20, data_dir=str(data_dir))
    assert check(ok, runner) == {"mmlu:mini": 20, "humaneval": 20}
    for bad, why in [(dict(variants=["fp32"]), "at least two"), (dict(variants=["fp32", "fp32"]), "once"),
                     (dict(benchmarks=["mmlu:nosuch"]), "no subset 'nosuch'"), (dict(benchmarks=[]), "benchmark")]:
        with pytest.raises(LabError, match=why):
            check(QuantRequest(**{**ok.to_dict(), **bad}), runner)


def test_every_variant_gets_the_same_items(tmp_path, data_dir):
    from lab.eval.quant import eval_request

    req = QuantRequest("tiny-random", ["fp32", "bf16"], ["mmlu:mini", "humaneval"], limit=20, data_dir=str(data_dir))
    runner = Runner(RunStore.open(tmp_path))
    for bench in req.benchmarks:  # the plan is a pure function of the request, and the request has no variant in it
        a, b = runner.plan(eval_request(req, bench)), runner.plan(eval_request(req, bench))
        assert [(i.key, i.prompt) for i in a.items] == [(i.key, i.prompt) for i in b.items]


# ---- in process, with a stand-in model -----------------------------------------------------------------------
class FakeModel:
    """Answers multiple-choice items by a hash of the prompt; `noise` of them differently from the reference."""

    def __init__(self, variant: str, noise: float) -> None:
        from lab.interface import ModelInfo

        self.info = ModelInfo(name="fake", source="fake", quant=variant, device="cpu", context_length=4096,
                              weight_bytes=1000)
        self.noise, self.closed = noise, False

    def score_choices(self, prompts, choices, batch_size=None):
        import hashlib

        out = []
        for p in prompts:
            h = hashlib.sha256(p.encode()).digest()
            pick = h[0] % len(choices) if h[1] / 255 >= self.noise else (h[0] + 1) % len(choices)
            out.append([0.0 if i == pick else -5.0 for i in range(len(choices))])
        return out

    def count_chat_tokens(self, messages, tools=None):
        return len(messages[0]["content"].split())

    def stream_chat(self, messages, params, cancel=None, tools=None):
        from lab.interface import Chunk, ReplyStats

        yield Chunk("x", ReplyStats(10, params.max_new_tokens, 0.01, 100.0, 0.2, "length"))

    def close(self):
        self.closed = True


def fake_loader(loaded: list):
    def load(req, variant):
        if variant.quant == "4bit":
            raise LabError("4bit needs CUDA, and this machine has none.")
        model = FakeModel(variant.text, {"fp32": 0.0, "bf16": 0.0, "fp16": 0.3}[variant.text])
        assert all(m.closed for m in loaded), "the previous variant is closed before the next loads"
        loaded.append(model)
        return model
    return load


def test_a_report_in_process_flips_charts_failures_and_progress(tmp_path, data_dir):
    from lab.eval import quant

    store = RunStore.open(tmp_path)
    req = QuantRequest("fake", ["fp32", "4bit", "bf16", "fp16"], ["mmlu:mini"], limit=60, data_dir=str(data_dir))
    seen, loaded = [], []
    rid = quant.run_report(store, req, on_progress=seen.append, loader=fake_loader(loaded))
    rep = quant.load_report(store, rid)
    assert json.loads(json.dumps(rep)) == rep  # JSON-able as it is
    rows = {v["variant"]: v for v in rep["variants"]}
    assert rows["4bit"]["error"] == "4bit needs CUDA, and this machine has none." and not rows["4bit"]["results"]
    same, noisy = rows["bf16"]["results"]["mmlu:mini"], rows["fp16"]["results"]["mmlu:mini"]
    assert same["delta"] == 0 and same["p_mcnemar"] == 1 and same["agreement"] == 1 and same["within_noise"]
    assert noisy["agreement"] < 0.9 and noisy["lost"] + noisy["gained"] > 0 and noisy["groups"] and noisy["subjects"]
    flips = [f for f in rep["flips"] if f["variant"] == "fp16"]
    assert len(flips) == noisy["lost"] + noisy["gained"] and all(f["prompt"] for f in flips)
    assert {(p.variant, p.variant_index, p.n_variants) for p in seen} == {("fp32", 0, 4), ("bf16", 2, 4),
                                                                          ("fp16", 3, 4)}
    assert seen[-1].done == seen[-1].total == 60 and seen[-1].eta_s == 0
    page = quant.render_html(rep)
    assert page.count("<details>") == len(flips) and page.count("<svg") == 2  # categories and subjects
    assert "4bit needs CUDA" in quant.render_markdown(rep) and "4bit needs CUDA" in quant.render_text(rep)
    assert [r["id"] for r in quant.list_reports(store)] == [rid]
    # a finished report resumes to itself without loading anything
    assert quant.run_report(store, None, resume=rid, loader=None) == rid


# ---- end to end -------------------------------------------------------------------------------------------
@pytest.fixture
def env(tmp_path, data_dir):
    return {"LAB_RUNS_DIR": str(tmp_path / "runs"), "LAB_DATA_DIR": str(data_dir)}


def exports(out: str) -> list[str]:
    line = next(x for x in out.splitlines() if x.startswith("wrote "))
    return line[len("wrote "):].split(", ")


def without_timings(report: dict) -> dict:
    r = json.loads(json.dumps(report))
    for k in ("timing", "created_at", "ended_at"):
        r.pop(k)
    for v in r["variants"]:
        v.pop("measured")
    return r


@pytest.mark.slow
def test_acceptance_prints_intervals_and_p_values_and_writes_three_self_contained_exports(env):
    r = run_cli("-m", "lab.eval", *ACCEPT, env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for h in ("mmlu:mini acc % [95% CI]", "Δ pts [paired 95% CI]", "McNemar p", "agree %", "humaneval pass@1",
              "tok/s", "TTFT ms", "weights GiB", "peak GiB", "load s", "Wilson", "within noise"):
        assert h in out, h
    bf16 = next(x for x in out.splitlines() if x.startswith("bf16 "))
    assert re.search(r"\d+\.\d \[\d+\.\d, \d+\.\d\]", bf16) and re.search(r"[+-]\d+\.\d \[[+-]\d+\.\d, [+-]", bf16)
    m = re.search(r"This command, exports included: .* = (\d+\.\d)% loading included, (\d+\.\d)% beyond", out)
    assert m, out  # the overhead is measured by the command and printed; its size is no test's to time
    md, page, js = exports(out)
    assert all(os.path.isfile(p) for p in (md, page, js))
    report = json.load(open(js))
    assert [v["variant"] for v in report["variants"]] == ["fp32", "bf16"] and report["reference"] == "fp32"
    res = report["variants"][1]["results"]
    assert res["mmlu:mini"]["n"] == 20 and res["humaneval"]["n"] == 20
    assert 0 <= res["mmlu:mini"]["p_mcnemar"] <= 1 and res["mmlu:mini"]["groups"]
    text = open(page, encoding="utf-8").read()
    assert "<svg" in text and not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert "| variant |" in open(md, encoding="utf-8").read()


@pytest.mark.slow
def test_a_variant_that_cannot_load_is_one_sentence_in_its_row_and_the_others_run(env):
    r = run_cli("-m", "lab.eval", "quant", "--model", "tiny-random", "--variants", "fp32,4bit,bf16", "--benchmarks",
                "mmlu:mini", "--limit", "8", env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.load(open(exports(r.stdout)[2]))
    rows = {v["variant"]: v for v in report["variants"]}
    assert rows["4bit"]["status"] == "failed" and rows["4bit"]["results"] == {}
    err = rows["4bit"]["error"]
    assert "bitsandbytes" in err and "\n" not in err and err.endswith(".") and err.count(". ") == 0
    assert rows["fp32"]["status"] == rows["bf16"]["status"] == "done"
    assert rows["bf16"]["results"]["mmlu:mini"]["delta"] is not None
    line = next(x for x in r.stdout.splitlines() if x.startswith("4bit "))
    assert err in line  # the sentence is in the variant's own row


@pytest.mark.slow
def test_a_gguf_file_that_cannot_be_loaded_is_one_sentence_and_the_reference_still_runs(env, tmp_path):
    import inspect

    from lab.models import load_model

    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")  # not a real GGUF file, and no loader takes it
    r = run_cli("-m", "lab.eval", "quant", "--model", "tiny-random", "--variants", f"fp32,gguf={fake}",
                "--benchmarks", "mmlu:mini", "--limit", "4", env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    ref, row = json.load(open(exports(r.stdout)[2]))["variants"]
    assert ref["status"] == "done" and ref["results"]["mmlu:mini"]["n"] == 4
    assert row["status"] == "failed" and "\n" not in row["error"] and row["error"].endswith(".")
    if "gguf_file" not in inspect.signature(load_model).parameters:
        assert "cannot load GGUF files yet" in row["error"]
    else:  # lab.models reads GGUF files now: its own sentence about this one
        assert str(fake) in row["error"] or "GGUF" in row["error"]


@pytest.mark.slow
def test_sigkill_half_way_then_resume_gives_the_same_report(env):
    args = ["quant", "--model", "tiny-random", "--variants", "fp32,bf16", "--benchmarks", "mmlu:mini,cmmlu:mini",
            "--limit", "40", "--batch-size", "4", "--shots", "1"]
    full = run_cli("-m", "lab.eval", *args, env=env, timeout=900)
    assert full.returncode == 0, full.stderr
    whole = json.load(open(exports(full.stdout)[2]))

    db = os.path.join(env["LAB_RUNS_DIR"], "lab.db")
    proc = subprocess.Popen([sys.executable, "-m", "lab.eval", *args], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    victim, written = None, 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        with sqlite3.connect(db) as c:
            row = c.execute("SELECT id FROM quant_reports WHERE status='running'").fetchone()
            if row:
                victim = row[0]
                written = c.execute("SELECT count(*) FROM samples JOIN quant_runs ON samples.run_id=quant_runs.run_id"
                                    " WHERE report_id=?", (victim,)).fetchone()[0]
        if victim and written >= 100:  # past the first variant, inside the second
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert victim and 100 <= written < 160, f"killed at {written}/160"

    listed = run_cli("-m", "lab.eval", "quant", "--list", env=env)
    assert "interrupted" in next(x for x in listed.stdout.splitlines() if x.startswith(victim))
    resumed = run_cli("-m", "lab.eval", "quant", "--resume", victim, env=env, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    again = json.load(open(exports(resumed.stdout)[2]))
    assert again["id"] == victim and again["status"] == "finished"
    a, b = without_timings(whole), without_timings(again)
    for r in (a, b):  # the two reports are made of different runs; everything computed from them is equal
        r.pop("id")
        for v in r["variants"]:
            for res in v["results"].values():
                res.pop("run_id")
    assert a == b
    with sqlite3.connect(db) as c:  # the resumed report reused the killed report's runs, none were started anew
        n = c.execute("SELECT count(*) FROM quant_runs WHERE report_id=?", (victim,)).fetchone()[0]
    assert n == 4
