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
