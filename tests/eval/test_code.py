"""lab.eval.code on literal strings: extraction rules, pass@k, and the problems and samples readers."""

from __future__ import annotations

import gzip
import json
import math
from fractions import Fraction

import pytest

from lab.errors import LabError
from lab.eval.data import Problem, read_problems, read_samples
from lab.eval.kinds.code import completion_prompt, extract_completion, instruct_messages, pass_at_k, pass_at_k_table
from lab.eval.spec import load_spec

COMPLETION_STOPS = tuple(load_spec("humaneval").generation["stops"])

PROMPT = '''from typing import List


def _twice(x: int) -> int:
    return 2 * x


def add(a: int, b: int) -> int:
    """Return a + b.
    >>> add(1, 2)
    3
    """
'''
TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 1) == -3\n"
ADD = Problem("Lab/0", PROMPT, "    return a + b\n", TEST, "add")
DEF = "def add(a: int, b: int) -> int:\n    return a + b"


def passes(completion: str, problem: Problem = ADD) -> bool:
    """Run the program in this process: fine here, the code under test is our own literal text."""
    program = problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})"
    try:
        exec(compile(program, "<test>", "exec"), {})
    except AssertionError:
        return False
    return True


# ---- instruct mode -------------------------------------------------------------------------
def test_fenced_python_block_replaces_the_stub():
    reply = f"Here is the function:\n\n```python\n{DEF}\n```\n\nIt adds the numbers."
    assert extract_completion(reply, ADD, "instruct") == "\n" + DEF + "\n"
    assert passes(extract_completion(reply, ADD, "instruct"))


def test_bare_fence():
    assert passes(extract_completion(f"```\n{DEF}\n```", ADD, "instruct"))


def test_unterminated_fence_runs_to_the_end():
    completion = extract_completion(f"Sure.\n```python\n{DEF}\n", ADD, "instruct")
    assert completion == "\n" + DEF + "\n" and passes(completion)


def test_of_several_blocks_the_one_defining_the_entry_point_wins():
    reply = ("First import this:\n```python\nimport math\n```\n"
             f"Then:\n```python\n{DEF}\n```\nUsage:\n```python\nprint(add(1, 2))\n```")
    assert extract_completion(reply, ADD, "instruct") == "\n" + DEF + "\n"


def test_without_a_defining_block_the_first_python_block_wins():
    reply = "```text\nnot code\n```\n```python\nreturn a + b\n```\n```python\nreturn 0\n```"
    assert extract_completion(reply, ADD, "instruct") == "    return a + b\n"


def test_raw_code_without_a_fence():
    assert passes(extract_completion(DEF + "\n", ADD, "instruct"))


def test_the_prompts_imports_and_helpers_stay():
    reply = ("```python\ndef add(a: int, b: int) -> int:\n"
             "    xs: List[int] = [a, b]\n    return _twice(sum(xs)) // 2\n```")
    assert passes(extract_completion(reply, ADD, "instruct"))


@pytest.mark.parametrize("body", ["return a + b", "    return a + b", "        return a + b", "  return a + b"])
def test_a_body_only_reply_is_indented_to_four_spaces(body):
    completion = extract_completion(f"```python\n{body}\n```", ADD, "instruct")
    assert completion == "    return a + b\n" and passes(completion)


def test_chinese_prose_around_the_code():
    reply = f"以下是代码：\n\n```python\n{DEF}\n```\n\n这个函数返回两个数的和。"
    assert passes(extract_completion(reply, ADD, "instruct"))


def test_a_wrong_answer_still_extracts_and_fails():
    completion = extract_completion("```python\ndef add(a, b):\n    return a - b\n```", ADD, "instruct")
    assert not passes(completion)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        extract_completion("x", ADD, "chat")


# ---- completion mode -----------------------------------------------------------------------
@pytest.mark.parametrize("stop", COMPLETION_STOPS)
def test_completion_is_cut_at_each_stop(stop):
    reply = "    return a + b" + stop + "whatever follows()\n"
    assert extract_completion(reply, ADD, "completion", COMPLETION_STOPS) == "    return a + b"


def test_completion_is_cut_at_the_earliest_stop():
    reply = "    s = a + b\n    return s\n\nprint(add(1, 2))\ndef more():\n    pass\n"
    assert extract_completion(reply, ADD, "completion", COMPLETION_STOPS) == "    s = a + b\n    return s\n"


def test_completion_without_a_stop_is_kept_whole():
    assert extract_completion("    return a + b\n", ADD, "completion", COMPLETION_STOPS) == "    return a + b\n"
    assert passes("    return a + b\n")


def test_completion_prompt_is_the_raw_prompt():
    assert completion_prompt(ADD) == PROMPT


def test_instruct_messages_fill_the_slot_and_keep_braces():
    p = Problem("Lab/1", 'def f(d: dict) -> str:\n    """{"a": 1} -> f"{x}"."""\n', "", "", "f")
    msgs = instruct_messages(p, "Complete:\n```python\n{prompt}\n```", system="Be brief.")
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert msgs[1]["role"] == "user" and p.prompt.strip() in msgs[1]["content"]
    assert [m["role"] for m in instruct_messages(p, "{prompt}")] == ["user"]


# ---- pass@k ------------------------------------------------------------------------------
@pytest.mark.parametrize("n,c,k,want", [(10, 3, 1, 0.3), (5, 2, 2, 0.7), (10, 0, 1, 0.0), (10, 0, 10, 0.0),
                                        (5, 4, 2, 1.0), (10, 10, 1, 1.0), (1, 1, 1, 1.0)])
def test_pass_at_k_by_hand(n, c, k, want):
    assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_equals_the_binomial_formula():
    for n, c, k in [(20, 7, 5), (200, 13, 100), (1000, 500, 100), (3000, 1, 1000)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("n,c,k", [(5, 1, 10), (5, 6, 1), (5, -1, 1), (5, 1, 0)])
def test_pass_at_k_refuses_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_table_averages_over_tasks_and_skips_large_k():
    table = pass_at_k_table({"a": (10, 3), "b": (10, 0), "c": (20, 20)})
    assert set(table) == {"pass@1", "pass@10"}
    assert table["pass@1"] == pytest.approx((0.3 + 0.0 + 1.0) / 3)
    assert table["pass@10"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert pass_at_k_table({}) == {}


# ---- files ---------------------------------------------------------------------------------
def test_reads_the_real_problems(data_dir):
    problems = read_problems(data_dir / "humaneval" / "HumanEval.jsonl.gz")
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0"
    assert all(p.prompt and p.test and p.entry_point for p in problems)


def test_reads_plain_and_gzipped_jsonl_and_skips_blank_lines(tmp_path):
    row = {"task_id": "T/0", "prompt": "p", "canonical_solution": "s", "test": "t", "entry_point": "f", "x": 1}
    (tmp_path / "p.jsonl").write_text(json.dumps(row) + "\n\n")
    (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress((json.dumps(row) + "\n").encode()))
    for name in ("p.jsonl", "p.jsonl.gz"):
        assert read_problems(tmp_path / name) == [Problem("T/0", "p", "s", "t", "f")]


def test_missing_problems_file_names_it(tmp_path):
    with pytest.raises(LabError, match="nowhere.jsonl") as e:
        read_problems(tmp_path / "nowhere.jsonl")
    assert str(e.value).count(".") >= 1 and "\n" not in str(e.value)


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"task_id": "T/0", "prompt": "p", "canonical_solution": "", "test": "", "entry_point": "f"}\n'
                    '{"task_id": "T/1", "prompt": \n')
    with pytest.raises(LabError, match=r"Line 2 of .*bad\.jsonl is not valid JSON"):
        read_problems(path)


def test_missing_field_is_named(tmp_path):
    path = tmp_path / "short.jsonl"
    path.write_text(json.dumps({"task_id": "T/0", "prompt": "p", "test": "", "entry_point": "f"}) + "\n")
    with pytest.raises(LabError, match=r"Line 1 of .*short\.jsonl .*canonical_solution"):
        read_problems(path)


def test_corrupt_gzip_names_the_file(tmp_path):
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n' * 100)[:40])
    with pytest.raises(LabError, match="broken.jsonl.gz"):
        read_problems(path)


def test_samples_keep_extra_keys_and_need_a_completion(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return 1\n", "model": "m"}) + "\n")
    assert read_samples(path) == [{"task_id": "HumanEval/0", "completion": "    return 1\n", "model": "m"}]
    path.write_text(json.dumps({"task_id": "HumanEval/0"}) + "\n")
    with pytest.raises(LabError, match=r"Line 1 of .*samples\.jsonl .*completion"):
        read_samples(path)
