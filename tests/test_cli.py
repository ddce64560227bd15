"""Command lines end in one clear sentence on bad input, never a traceback."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # each test starts app.py in a subprocess


def assert_one_sentence_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for f in fragments:
        assert f in errors[0]
    return errors[0]


def test_unknown_hub_model_names_the_offline_ways_out():
    line = assert_one_sentence_error(run_cli("app.py", "--model", "no/such-model"),
                                     "no/such-model", "--model tiny-random", "--model PATH")
    assert line.endswith(".")


def test_4bit_on_a_cpu_is_refused_before_any_download():
    assert_one_sentence_error(run_cli("app.py", "--quant", "4bit", env={"CUDA_VISIBLE_DEVICES": ""}),
                              "--quant 4bit", "needs an NVIDIA GPU with CUDA")
    assert_one_sentence_error(run_cli("app.py", "--model", "tiny-random", "--quant", "8bit",
                                      env={"CUDA_VISIBLE_DEVICES": ""}), "--quant 8bit")


def test_bad_auth_value():
    assert_one_sentence_error(run_cli("app.py", "--model", "tiny-random", "--auth", "nocolon"), "USER:PASS")


@pytest.mark.slow
def test_chat_bench_runs_on_the_cpu(tmp_path):
    proc = run_cli("-m", "lab.bench", "chat", "--shape", "tiny", "--quants", "fp32", "--new-tokens", "16",
                   "--repeats", "1", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "chat-tiny.md").read_text()
    assert "| fp32" in table and "decode tok/s" in table


BAD_NUMBERS = [
    (("app.py", "--port", "99999"), "--port", "must be a whole number between 1 and 65,535, got 99999."),
    (("app.py", "--model", "tiny-random", "--context", "nan"), "--context", "got nan."),
    (("-m", "lab.serve", "--port", "-1"), "--port", "got -1."),
    (("-m", "lab.serve", "--context", "1e400"), "--context", "must be a whole number between 512 and 1,048,576"),
    (("-m", "lab.eval", "humaneval", "--timeout", "-1"), "--timeout",
     "must be a number above 0 and at most 86400, got -1."),  # a negative timeout failed every correct program
    (("-m", "lab.eval", "humaneval", "--timeout", "inf"), "--timeout", "got inf."),
    (("-m", "lab.eval", "humaneval", "--workers", "0"), "--workers", "must be a whole number between 1 and 1,024, got 0."),
    (("-m", "lab.eval", "humaneval", "--samples-per-task", "0"), "--samples-per-task", "got 0."),
    (("-m", "lab.eval", "mmlu", "--batch-size", "0"), "--batch-size", "must be a whole number between 1 and 65,536"),
    (("-m", "lab.eval", "mmlu", "--temperature", "-1"), "--temperature",
     "must be 0 or a number between 0.01 and 2, got -1."),
    (("-m", "lab.eval", "mmlu", "--temperature", "NaN"), "--temperature", "got NaN."),
    (("-m", "lab.eval", "mmlu", "--max-new-tokens", "0"), "--max-new-tokens", "got 0."),
    (("-m", "lab.eval", "mmlu", "--seed", str(10**30)), "--seed", "must be a whole number between 0 and 4,294,967,295"),
    (("-m", "lab.eval", "mmlu", "--limit", "2.5"), "--limit", "got 2.5."),
    (("-m", "lab.eval", "mmlu", "--shots", "6"), "--shots", "must be a whole number between 0 and 5, got 6."),
]


@pytest.mark.parametrize("argv, flag, sentence", BAD_NUMBERS, ids=[" ".join(a[-3:]) for a, _, _ in BAD_NUMBERS])
def test_a_number_out_of_range_is_one_sentence_and_status_2(argv, flag, sentence):
    line = assert_one_sentence_error(run_cli(*argv, timeout=60), f"error: {flag} must be ", sentence)
    assert line.endswith(".")
