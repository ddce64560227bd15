"""The Evaluate tab called from a program with gradio_client, against `python app.py --model tiny-random`.

The app writes its runs to LAB_RUNS_DIR (a temporary folder, set in conftest.py), so these tests
read the very same records through `RunStore` and check that the page reports what the store holds.
"""

from __future__ import annotations

import json
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
    assert mine[2:5] == ["mmlu", "logprob", 0] and mine[7:10] == ["finished", "8/8", score]

    headline, table, chart, note, samples, detail = client.predict(run_id, False, api_name="/eval_run")
    assert run_id in headline and "micro" in headline and detail == ""
    assert rows(table)[0][:2] == ["overall", 8]
    assert len(rows(samples)) == 8 and chart.count('class="eval-bar"') == len(summary["subjects"])
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
    assert next(r for r in rows(client.predict(api_name="/eval_runs")) if r[0] == run_id)[7:9] == ["cancelled", "8/16"]

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


# ---- the quantization report (lab/ui/quant_views.py over lab/eval/quant.py) ---------------------------
QUANT = dict(model="tiny-random", variants=["fp32", "bf16"], benchmarks=["mmlu:mini"], limit=8, shots="0", seed=11)


def test_quant_report_streams_progress_and_the_report_matches_the_store(client):
    from lab.eval import quant

    job = client.submit(**QUANT, api_name="/quant_report")
    report_id, final = job.result()
    texts = [out[1] for out in job.outputs()]
    assert report_id.startswith("quant-") and "Finished quant-" in final and "2/2 variants ran" in final
    assert any("variant 1/2 fp32 · mmlu:mini" in t and "running accuracy" in t for t in texts)
    assert any("variant 2/2 bf16" in t for t in texts)
    rep = quant.load_report(RunStore.open(), report_id)
    assert rep["status"] == "finished" and [v["variant"] for v in rep["variants"]] == ["fp32", "bf16"]
    assert all(v["results"]["mmlu:mini"]["n"] == 8 for v in rep["variants"])

    headline, frame, files = client.predict(report_id, api_name="/quant_show")
    assert report_id in headline and "finished" in headline and "srcdoc=" in frame
    by_ext = {f.rsplit(".", 1)[-1]: f for f in files}
    assert sorted(by_ext) == ["html", "json", "md"]
    with open(by_ext["json"], encoding="utf-8") as f:
        assert json.load(f) == json.loads(report.json_text(rep))
    with open(by_ext["md"], encoding="utf-8") as f:
        assert f.read() == quant.render_markdown(rep)
    listed = rows(client.predict(api_name="/quant_reports"))
    assert next(r for r in listed if r[0] == report_id)[1:5] == ["tiny-random", "fp32, bf16", "mmlu:mini", "finished"]
    # the chat model was freed for the report and is back
    assert client.predict(api_name="/model_info")["name"] == "tiny-random"


def test_quant_report_cancel_then_resume(client):
    from lab.eval import quant

    # 200 items per variant, 25 batches of 8: seconds on a CPU, so Cancel lands mid-report
    job = client.submit(**{**QUANT, "limit": 200, "benchmarks": ["mmlu"]}, api_name="/quant_report")
    deadline = time.monotonic() + 120
    while not any("running accuracy" in out[1] for out in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), "the report never reported progress"
        time.sleep(0.1)
    client.predict(api_name="/quant_cancel")
    report_id, final = job.result()
    assert "Cancelled" in final and "press Resume" in final
    assert quant.load_report(RunStore.open(), report_id)["status"] == "cancelled"

    resumed, final = client.predict(report_id, api_name="/quant_resume")
    assert resumed == report_id and "Finished quant-" in final
    rep = quant.load_report(RunStore.open(), report_id)
    assert rep["status"] == "finished" and all(v["results"]["mmlu"]["n"] == 200 for v in rep["variants"])


def test_quant_report_bad_requests_are_one_sentence(client):
    with pytest.raises(Exception, match="at least two variants"):
        client.predict(**{**QUANT, "variants": ["fp32"]}, api_name="/quant_report")
    with pytest.raises(Exception, match="Unknown variant 'fp7'"):
        client.predict(**{**QUANT, "variants": ["fp32", "fp7"]}, api_name="/quant_report")
    with pytest.raises(Exception, match="No quantization report 'nope'"):
        client.predict("nope", api_name="/quant_show")
    with pytest.raises(Exception, match="Pick a report in the list first"):
        client.predict(None, api_name="/quant_resume")
    assert client.predict(api_name="/model_info")["name"] == "tiny-random"  # nothing freed the chat model


def test_a_variant_that_cannot_load_is_one_sentence_in_its_row(client):
    from lab.eval import quant

    # 8bit needs CUDA and bitsandbytes: on this CPU its row says so, and fp32 still runs
    report_id, final = client.predict(**{**QUANT, "variants": ["fp32", "8bit"], "limit": 4}, api_name="/quant_report")
    assert "1/2 variants ran" in final and "8bit: " in final
    rep = quant.load_report(RunStore.open(), report_id)
    failed = next(v for v in rep["variants"] if v["variant"] == "8bit")
    assert failed["status"] == "failed" and failed["error"] in final and failed["error"].endswith(".")
    assert "\n" not in failed["error"] and "Traceback" not in final
