"""The Compare tab's endpoints called from a program (gradio_client) against `python app.py --model tiny-random`."""

from __future__ import annotations

import json

import pytest
from gradio_client import Client

from lab.compare import parse_variants, run_variants
from lab.eval.store import RunStore

pytestmark = pytest.mark.slow

THREE = [{"name": "greedy", "temperature": 0, "max_new_tokens": 24},
         {"name": "concise", "system": "Concise", "temperature": 0, "max_new_tokens": 16},
         {"name": "story", "template": "Tell it as a story: {input}", "temperature": 0.9, "seed": 4,
          "max_new_tokens": 12}]


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def test_compare_with_three_variants_returns_three_outputs(client, tiny):
    job = client.submit(input="Why is the sky blue? 天为什么是蓝的？", variants=json.dumps(THREE), api_name="/compare")
    outputs = job.result()
    assert isinstance(outputs, list) and len(outputs) == 3 and all(isinstance(t, str) and t for t in outputs)
    partials = job.outputs()
    assert partials[-1] == outputs
    assert all(len(p) == 3 and all(o.startswith(t) for o, t in zip(outputs, p)) for p in partials), "streamed growing"
    # The same variants in this process give the same texts (the sampled pane runs on its own seed, 4).
    for panes in run_variants(tiny, "Why is the sky blue? 天为什么是蓝的？", parse_variants(THREE)):
        pass
    assert [p.text for p in panes] == outputs


@pytest.mark.parametrize("text, variants, message", [
    ("  ", THREE, "The input is empty"),
    ("hi", THREE[:1], "Compare takes 2 to 4 variants, not 1"),
    ("hi", THREE + THREE[:2], "Compare takes 2 to 4 variants, not 5"),
    ("hi", [THREE[0], {**THREE[1], "template": "no slot"}], r"template without an \{input\} slot"),
    ("hi", [THREE[0], {**THREE[1], "top_p": 1.5}], "invalid sampling setting: top_p"),
])
def test_bad_requests_are_one_sentence_and_the_app_keeps_serving(client, text, variants, message):
    with pytest.raises(Exception, match=message):
        client.predict(input=text, variants=json.dumps(variants), api_name="/compare")
    assert len(client.predict(input="still there?", variants=json.dumps(THREE[:2]), api_name="/compare")) == 2


def test_variants_on_a_benchmark_through_the_api(client, data_dir):
    variants = [{"name": "plain"}, {"name": "letter", "template": "{input}\nOnly the letter, please."}]
    rows = client.predict(variants=json.dumps(variants), benchmark="mmlu", limit=20, seed=9, max_new_tokens=6,
                          api_name="/compare_bench")
    assert [r["variant"] for r in rows] == ["plain", "letter"] and all(r["items"] == 20 for r in rows)
    store = RunStore.open()  # the app's run history (LAB_RUNS_DIR, which the app inherits)
    runs = [store.get(r["run_id"]) for r in rows]
    assert all(run.status == "finished" and run.mode == "gen" for run in runs)
    assert runs[1].params["request"]["template"] == "{input}\nOnly the letter, please."
