"""Benchmarks are data: every YAML in evals/ is discovered, a new one runs with no code, and a broken one says
what is wrong in one sentence naming its file."""

from __future__ import annotations

import shutil

import pytest
import yaml

from lab import config
from lab.errors import LabError
from lab.eval.data import Dataset
from lab.eval.kinds import kind_of
from lab.eval.runner import EvalRequest, Runner
from lab.eval.spec import benchmarks, load_spec
from lab.eval.store import RunStore


def test_the_shipped_benchmarks_are_discovered_in_their_order():
    assert benchmarks() == ["mmlu", "ceval", "cmmlu", "humaneval"]
    assert [kind_of(load_spec(b)).MODES[0] for b in benchmarks()] == ["logprob"] * 3 + ["instruct"]


def test_cmmlu_is_one_yaml_file_with_its_own_layout(data_dir):
    spec = load_spec("cmmlu")
    ds = Dataset(spec, data_dir)
    subjects = ds.subjects()
    assert len(subjects) == 67
    assert sum(len(ds.questions(s, "test")) for s in subjects) == 11582
    assert all(len(ds.questions(s, "dev")) == 5 for s in subjects)
    assert ds.subject_name("agronomy") == "农学" and ds.categories("ancient_chinese") == ["Social Science",
                                                                                          "China specific"]
    china = [s for s in subjects if "China specific" in ds.categories(s)]
    assert len(china) == 15 and all(len(ds.categories(s)) == 2 for s in china)
    q = ds.questions("agronomy", "dev")[0]
    assert q.question == "肉牛屠宰后，胴体的哪个部位肉质较好" and q.options == ["胸", "腹", "大腿", "小腿"] and q.answer == "C"


def test_a_new_benchmark_is_a_yaml_file_and_nothing_else(tmp_path, monkeypatch, data_dir):
    """A copy of MMLU's spec under another name, with a subset of its own, plans and runs like any benchmark."""
    for name in benchmarks():
        shutil.copy(config.evals_dir() / f"{name}.yaml", tmp_path)
    raw = yaml.safe_load((config.evals_dir() / "mmlu.yaml").read_text(encoding="utf-8"))
    raw.update(name="mmlu-law", title="MMLU law", order=0,
               subsets={"law": {"description": "two law subjects", "subjects": ["international_law", "jurisprudence"]}})
    (tmp_path / "mmlu-law.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("LAB_EVALS_DIR", str(tmp_path))
    assert benchmarks()[0] == "mmlu-law"
    plan = Runner(RunStore.open(tmp_path / "runs")).plan(EvalRequest("mmlu-law", subset="law", shots=1,
                                                                     data_dir=str(data_dir)))
    assert {it.subject for it in plan.items} == {"international_law", "jurisprudence"}
    assert plan.items[0].prompt.startswith("The following are multiple choice questions (with answers) about "
                                           "international law.")


@pytest.mark.parametrize("change, message", [
    ({"kind": "essay"}, "has kind 'essay'; the kinds are choice, code"),
    ({"colour": "red"}, "has a field the runner does not know"),
    ({"name": "other"}, "names itself 'other'; a spec's name must be its file's name, 'broken'"),
    ({"prompts": {"header": "x"}}, r"lacks the prompt template\(s\) question, gen_user, gen_answer"),
    ({"data": {}}, "names neither a local file pattern"),
])
def test_a_broken_spec_is_one_sentence_naming_its_file(tmp_path, monkeypatch, change, message):
    raw = yaml.safe_load((config.evals_dir() / "mmlu.yaml").read_text(encoding="utf-8"))
    raw.update({"name": "broken", **change})
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("LAB_EVALS_DIR", str(tmp_path))
    with pytest.raises(LabError, match=message) as e:
        kind_of(load_spec("broken"))
    assert str(tmp_path / "broken.yaml") in str(e.value) or "kinds are" in str(e.value)
    assert "\n" not in str(e.value)


def test_an_unknown_benchmark_names_the_known_ones():
    with pytest.raises(LabError, match="Unknown benchmark 'gsm8k'; choose one of mmlu, ceval, cmmlu, humaneval"):
        load_spec("gsm8k")


def test_a_named_template_is_chosen_on_the_command_line_and_kept_with_the_run(tmp_path, data_dir):
    """--template reaches the request, the request is what a run stores (resume rebuilds the plan from it),
    and the plan renders that template; a name the spec lacks is one sentence."""
    from lab.eval.__main__ import _request, build_parser

    args = build_parser().parse_args(["ceval", "--template", "official", "--limit", "3", "--data-dir", str(data_dir)])
    req = _request(args)
    assert req.prompt_template == "official"
    stored = EvalRequest.from_dict(req.to_dict())
    assert stored == req
    runner = Runner(RunStore.open(tmp_path))
    official, default = runner.plan(stored), runner.plan(EvalRequest("ceval", limit=3, data_dir=str(data_dir)))
    assert [it.key for it in official.items] == [it.key for it in default.items]
    assert all("考试的单项选择题" in it.prompt and "答案： " not in it.prompt and it.prompt.count("答案：") == 6
               for it in official.items)  # the letter right after the cue, no space
    assert all("考试" not in it.prompt.split("\n")[0] for it in default.items)
    with pytest.raises(LabError, match="ceval has no prompt template 'paper'"):
        runner.plan(EvalRequest("ceval", prompt_template="paper", data_dir=str(data_dir)))


def test_a_malformed_template_says_so(tmp_path, monkeypatch):
    raw = yaml.safe_load((config.evals_dir() / "ceval.yaml").read_text(encoding="utf-8"))
    for change, message in [({"templates": {"x": "text"}}, "malformed 'templates' entry \\(x\\)"),
                            ({"templates": {"x": {"strip": ["answer"]}}},
                             "'strip: \\['answer'\\]' under 'templates: x'")]:
        (tmp_path / "ceval.yaml").write_text(yaml.safe_dump({**raw, **change}, allow_unicode=True), encoding="utf-8")
        monkeypatch.setenv("LAB_EVALS_DIR", str(tmp_path))
        with pytest.raises(LabError, match=message):
            kind_of(load_spec("ceval"))
