"""A run's scores as model-card metadata: huggingface_hub reads the block back to the same results, and
--push stops at one sentence offline or without a token (no test reaches the network)."""

from __future__ import annotations

import argparse
import json

import huggingface_hub
import pytest
import yaml
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from lab.errors import LabError
from lab.eval import hub
from lab.eval.store import RunStore
from tests.conftest import run_cli


@pytest.fixture
def store(tmp_path):
    return RunStore.open(tmp_path / "runs")


def finished(store, benchmark, mode, summary, **kw) -> str:
    meta = {"model": "Qwen2.5-7B-Instruct", "quant": "4bit", "n_total": 14042, "shots": None,
            "params": {"request": {}, "model": {"name": "Qwen2.5-7B-Instruct", "source": "Qwen/Qwen2.5-7B-Instruct"}}}
    meta.update(kw)
    run_id = store.create_run(benchmark=benchmark, mode=mode, **meta)
    store.finish(run_id, "finished", summary)
    return run_id


def read_back(text: str):
    """What the Hub would read from a card whose front matter is `text`."""
    card = ModelCard(f"---\n{text}---\n\nA card.\n")
    name, results = model_index_to_eval_results(yaml.safe_load(text)["model-index"])
    assert card.data.eval_results == results and card.data.model_name == name
    return name, results


def test_a_choice_run_reads_back_as_its_accuracy(store, tmp_path):
    run = store.get(finished(store, "mmlu", "logprob", {"overall": {"accuracy": 0.652345, "macro": 0.64}}, shots=5))
    text = hub.model_index_yaml(hub.card_data(run))
    name, results = read_back(text)
    assert name == "Qwen2.5-7B-Instruct" and len(results) == 1
    r = results[0]
    assert (r.task_type, r.dataset_type, r.dataset_name, r.dataset_split) == \
        ("multiple-choice", "cais/mmlu", "MMLU", "test")
    assert (r.metric_type, r.metric_value) == ("accuracy", 0.6523)
    assert r.metric_name == "accuracy (5-shot logprob, 4bit)" and r.metric_args == {"mode": "logprob", "shots": 5,
                                                                                     "quant": "4bit"}
    assert r.dataset_config is None and r.source_url is None  # one config per subject; no link given
    (tmp_path / "README.md").write_text(f"---\n{text}---\n")
    assert metadata_load(tmp_path / "README.md")["model-index"][0]["name"] == "Qwen2.5-7B-Instruct"


def test_a_code_run_gives_each_pass_at_k_and_says_it_is_partial(store):
    params = {"request": {"samples_per_task": 10, "temperature": 0.8},
              "model": {"name": "Qwen/Qwen2.5-Coder-7B-Instruct"}}
    summary = {"overall": {"tasks": 20, "pass@10": 0.61, "pass@1": 0.4}}
    run = store.get(finished(store, "humaneval", "instruct", summary, n_total=200, subset="mini", params=params))
    _, results = read_back(hub.model_index_yaml(hub.card_data(run, source_url="https://example.org/runs/1")))
    assert [(r.metric_type, r.metric_value) for r in results] == [("pass@1", 0.4), ("pass@10", 0.61)]
    r = results[0]
    assert (r.task_type, r.dataset_type, r.dataset_split) == ("text-generation", "openai/openai_humaneval", "test")
    assert r.metric_name == "pass@1 (instruct, 4bit, 200 problems, subset mini)"
    assert r.metric_args["items"] == 200 and r.metric_args["samples_per_task"] == 10
    assert (r.source_name, r.source_url) == (f"Qwen Lab run {run.id}", "https://example.org/runs/1")


def test_only_a_finished_run_with_a_model_goes_on_a_card(store):
    running = store.get(store.create_run(benchmark="mmlu", mode="gen", model="m", params={}, n_total=3))
    with pytest.raises(LabError, match="only a finished run's scores"):
        hub.card_data(running)
    scored = store.get(finished(store, "humaneval", "score", {"overall": {"pass@1": 1.0}}, model="file:x.jsonl"))
    with pytest.raises(LabError, match="add --model-name NAME"):
        hub.card_data(scored)
    assert hub.card_data(scored, model_name="mine").model_name == "mine"


def test_push_says_one_sentence_offline_and_without_a_token(store, monkeypatch):
    data = hub.card_data(store.get(finished(store, "mmlu", "gen", {"overall": {"accuracy": 0.5}})))
    called = []
    monkeypatch.setattr(huggingface_hub, "metadata_update", lambda *a, **kw: called.append((a, kw)) or "url")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LabError, match="^HF_HUB_OFFLINE is set, so nothing can be pushed to alice/m;"):
        hub.push("alice/m", data)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(LabError, match="^No Hugging Face token was found"):
        hub.push("alice/m", data)
    with pytest.raises(LabError, match="OWNER/NAME"):
        hub.push("not a repo", data)
    assert called == []


def test_push_hands_the_block_to_metadata_update_and_hides_the_token(store, monkeypatch):
    data = hub.card_data(store.get(finished(store, "mmlu", "gen", {"overall": {"accuracy": 0.5}})))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_secret")
    called = []
    monkeypatch.setattr(huggingface_hub, "metadata_update", lambda *a, **kw: called.append((a, kw)) or "commit-url")
    assert hub.push("alice/m", data) == "commit-url"
    (repo, metadata), kw = called[0]
    assert repo == "alice/m" and kw["overwrite"] is True
    assert model_index_to_eval_results(metadata["model-index"]) == ("Qwen2.5-7B-Instruct", data.eval_results)

    def refuse(*a, **kw):
        raise ConnectionError("cannot reach huggingface.co with hf_secret")
    monkeypatch.setattr(huggingface_hub, "metadata_update", refuse)
    with pytest.raises(LabError, match=r"^Updating the card of alice/m failed \(cannot reach huggingface.co with "
                                       r"\*\*\*\)"):
        hub.push("alice/m", data)


def test_export_writes_the_block_only_when_asked(store, tmp_path):
    run = store.get(finished(store, "mmlu", "gen", {"overall": {"accuracy": 0.5}}))
    args = argparse.Namespace(model_index=False, push=None, model_name=None, source_url=None)
    assert hub.export(run, tmp_path, args) is None and not list(tmp_path.glob("*.model-index.yaml"))
    path = hub.export(run, tmp_path, argparse.Namespace(**{**vars(args), "model_index": True}))
    assert read_back(path.read_text())[1][0].metric_value == 0.5


@pytest.mark.slow
def test_the_export_command_writes_a_block_the_hub_reads_and_push_stops_offline(data_dir, tmp_path):
    from lab.eval.data import read_problems

    problems = read_problems(data_dir / "humaneval" / "HumanEval.jsonl.gz")[:4]
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps({"task_id": p.task_id, "completion": c}) + "\n"
                               for p, c in zip(problems, [problems[0].canonical_solution, "    return None\n"] * 2)))
    runs = {"LAB_RUNS_DIR": str(tmp_path / "runs"), "LAB_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    r = run_cli("-m", "lab.eval", "humaneval", "--score", str(samples), env=runs, timeout=300)
    assert r.returncode == 0, r.stderr
    run_id = next(x for x in r.stdout.splitlines() if x.startswith("run ")).split()[1]
    out = run_cli("-m", "lab.eval", "export", run_id, "--model-index", "--model-name", "mine", "--out", str(tmp_path),
                  env=runs)
    assert out.returncode == 0, out.stderr
    name, results = read_back((tmp_path / f"{run_id}.model-index.yaml").read_text())
    summary = RunStore.open(runs["LAB_RUNS_DIR"]).get(run_id).summary["overall"]
    assert name == "mine" and [(x.metric_type, x.metric_value) for x in results] == [("pass@1", summary["pass@1"])]
    assert summary["pass@1"] == 0.25  # HumanEval/0's canonical solution passes; the others return None
    assert "model-index:" in out.stdout

    pushed = run_cli("-m", "lab.eval", "export", run_id, "--push", "alice/m", "--model-name", "mine", "--out",
                     str(tmp_path), env=runs)
    assert pushed.returncode == 2
    assert pushed.stderr.strip().splitlines() == [
        "error: HF_HUB_OFFLINE is set, so nothing can be pushed to alice/m; paste the model-index file into its "
        "card, or unset HF_HUB_OFFLINE and push again."]
