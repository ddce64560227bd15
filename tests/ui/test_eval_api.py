"""The Evaluate tab called from a program with gradio_client, against `python app.py --model tiny-random`.

The app writes its runs to LAB_RUNS_DIR (a temporary folder, set in conftest.py), so these tests
read the very same records through `RunStore` and check that the page reports what the store holds.
"""

from __future__ import annotations

import time

import pytest
from gradio_client import Client

from lab.eval import report
from lab.eval.store import RunStore

pytestmark = pytest.mark.slow

FORM = dict(benchmark="mmlu", subset="none", mode="logprob", shots=0, seed=1234)


@pytest.fixture(scope="module")
def client(app_url, data_dir):
    return Client(app_url, verbose=False)


def rows(table: dict) -> list[list]:
    return table["data"]


def test_evaluate_returns_the_run_id_and_the_finished_summary(client):
    run_id, summary, progress = client.predict(**FORM, limit=8, api_name="/evaluate")
    assert run_id.startswith("mmlu-") and summary["overall"]["n"] == 8
    assert "Finished" in progress and "accuracy" in progress
    run = RunStore.open().get(run_id)
    assert run.status == "finished" and run.summary == summary and run.shots == 0

    history = rows(client.predict(api_name="/eval_runs"))
    mine = next(r for r in history if r[0] == run_id)
    score = report.pct(summary["overall"]["accuracy"])
    assert mine[1:4] == ["mmlu", "logprob", 0] and mine[6:9] == ["finished", "8/8", score]

    headline, table, chart, note, samples, detail = client.predict(run_id, False, api_name="/eval_run")
    assert run_id in headline and "micro" in headline and detail == ""
    assert rows(table)[0][:2] == ["overall", 8]
    assert len(rows(samples)) == 8 and len(chart["data"]) == len(summary["subjects"])
    wrong = sum(r[6] == "✗" for r in rows(samples))
    assert wrong == 8 - summary["overall"]["correct"]
    _, _, _, _, only_wrong, _ = client.predict(run_id, True, api_name="/eval_run")
    assert len(rows(only_wrong)) == wrong and all(r[6] == "✗" for r in rows(only_wrong))


def test_progress_streams_while_it_runs(client):
    job = client.submit(benchmark="ceval", subset="none", mode="logprob", shots=5, limit=120, seed=7,
                        api_name="/evaluate")
    run_id, summary, final = job.result()
    texts = [out[2] for out in job.outputs()]
    assert "loading the data" in texts[0] and "Finished" in final and summary["overall"]["n"] == 120
    assert any(f"{run_id}: " in t and "/120 done · running accuracy" in t for t in texts[1:-1])
    assert "C-Eval Hard" in summary["groups"]


def test_cancel_keeps_the_finished_batches_and_resume_completes_the_run(client):
    # gen mode on a CPU: each batch of 8 questions generates for seconds, so Cancel lands mid-run
    job = client.submit(benchmark="mmlu", subset="none", mode="gen", shots=0, limit=16, seed=3, api_name="/evaluate")
    deadline = time.monotonic() + 60
    while not any("8/16 done" in out[2] for out in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), "the first batch never reported progress"
        time.sleep(0.2)
    client.predict(api_name="/eval_cancel")
    run_id, summary, progress = job.result()
    assert "Cancelled — resume it from the history" in progress and summary["overall"]["n"] == 8
    assert RunStore.open().get(run_id).status == "cancelled"
    assert next(r for r in rows(client.predict(api_name="/eval_runs")) if r[0] == run_id)[6:8] == ["cancelled", "8/16"]

    resumed_id, summary, progress = client.predict(run_id, api_name="/eval_resume")
    assert resumed_id == run_id and summary["overall"]["n"] == 16 and "Finished" in progress
    assert RunStore.open().get(run_id).status == "finished"


def test_compare_two_runs(client):
    a, _, _ = client.predict(**{**FORM, "shots": 0}, limit=12, api_name="/evaluate")
    b, _, _ = client.predict(**{**FORM, "shots": 3}, limit=12, api_name="/evaluate")
    overall, subjects, flips = client.predict(a, b, api_name="/eval_compare")
    store = RunStore.open()
    expected = report.run_delta(store.get(a), store.samples(a), store.get(b), store.samples(b))
    assert expected["shared"] == 12 and "12 samples both hold" in overall and "B−A" in overall
    o = expected["overall"]
    assert rows(subjects)[0] == ["overall", 12, report.pct(o["a"]), report.pct(o["b"]), f"{100 * o['delta']:+.1f}"]
    assert [r[0] for r in rows(flips)] == [f["key"] for f in expected["flipped"]]


def test_the_tab_offers_every_benchmark_of_evals(client):
    run_id, summary, progress = client.predict(benchmark="cmmlu", subset="none", mode="logprob", shots=2, limit=10,
                                               seed=1, api_name="/evaluate")
    assert run_id.startswith("cmmlu-") and summary["overall"]["n"] == 10 and "Finished" in progress
    groups = RunStore.open().get(run_id).params["groups"]  # every category of the benchmark, for its tables
    assert list(groups) == ["STEM", "Humanities", "Social Science", "Other", "China specific"]
    assert set(summary["groups"]) <= set(groups)


def test_bad_requests_end_in_one_sentence_and_the_app_keeps_serving(client):
    with pytest.raises(Exception, match="mmlu has no subset 'nope'; its subsets are: mini, stem."):
        client.predict(**{**FORM, "subset": "nope"}, limit=4, api_name="/evaluate")
    with pytest.raises(Exception, match="greater than maximum value 5"):
        client.predict(**{**FORM, "shots": 9}, limit=4, api_name="/evaluate")
    with pytest.raises(Exception, match="HumanEval has no mode 'logprob'; choose instruct or completion."):
        client.predict(**{**FORM, "benchmark": "humaneval"}, limit=1, api_name="/evaluate")
    with pytest.raises(Exception, match="No run 'no-such-run'"):
        client.predict("no-such-run", False, api_name="/eval_run")
    with pytest.raises(Exception, match="Pick two runs to compare"):
        client.predict(None, None, api_name="/eval_compare")
    run_id, summary, _ = client.predict(**FORM, limit=2, api_name="/evaluate")
    assert summary["overall"]["n"] == 2
