"""The running app (python app.py --model tiny-random) fed hostile numbers and text from a program (gradio_client):
each is one sentence from the one rule for numbers, never an exception's text, and the app keeps serving; a model
swap that fails reaches the caller of /load_model as an error while the old model keeps answering."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from gradio_client import Client

from lab.ui.chat_reply import LABELS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def still_answers(client) -> None:
    assert client.predict(message="still there?", max_new_tokens=4, seed=1, api_name="/chat")


def raw_call(app_url: str, api_name: str, data: str) -> str:
    """Call `api_name` through Gradio's HTTP API with `data` as literal JSON text (NaN and Infinity included,
    which a JSON library refuses to write); the events of the result."""
    url = f"{app_url}gradio_api/call/{api_name}"
    r = httpx.post(url, content=f'{{"data": {data}}}', headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    return httpx.get(f"{url}/{r.json()['event_id']}", timeout=60).text


def error_of(events: str) -> str:
    lines = events.splitlines()
    assert "event: error" in lines, events
    data = next(line for line in lines[lines.index("event: error"):] if line.startswith("data: "))[6:]
    return json.loads(data)["error"]


CHAT_ARGS = ["temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed"]
CHAT_DEFAULTS = {"temperature": "0.7", "top_p": "0.8", "top_k": "20", "repetition_penalty": "1.05",
                 "max_new_tokens": "8", "seed": "-1"}


@pytest.mark.parametrize("field, value, sentence", [
    ("temperature", "NaN", "temperature must be 0 or a number between 0.01 and 2, got nan."),
    ("temperature", "Infinity", "temperature must be 0 or a number between 0.01 and 2, got inf."),
    ("temperature", "1e-320", "temperature must be 0 or a number between 0.01 and 2, got 1e-320."),
    ("top_p", "-Infinity", "top_p must be a number between 0.001 and 1, got -inf."),
    ("seed", str(10**30), "seed must be a whole number between 0 and 4,294,967,295"),
    ("seed", "Infinity", "seed must be a whole number between 0 and 4,294,967,295, got inf."),
    ("top_k", "Infinity", "top_k must be a whole number between 0 and 1,000,000, got inf."),
    ("top_k", "2.5", "top_k must be a whole number between 0 and 1,000,000, got 2.5."),
    ("max_new_tokens", "0", "max_new_tokens must be a whole number between 1 and 1,048,576, got 0."),
    ("repetition_penalty", "NaN", "repetition_penalty must be a number between 0.01 and 10, got nan."),
])
def test_chat_numbers_out_of_range_are_one_sentence(app_url, client, field, value, sentence):
    numbers = ", ".join(value if name == field else CHAT_DEFAULTS[name] for name in CHAT_ARGS)
    error = error_of(raw_call(app_url, "chat", f'["hi", [], "Be brief.", {numbers}, false, "", ""]'))
    # the page names the field by its label, as the user sees it on the form
    label = {**LABELS, "seed": "Seed (-1 for a new one each reply)"}[field]
    assert error.startswith(sentence.replace(field, label, 1)) and error.endswith("."), error
    still_answers(client)


def test_a_lone_surrogate_in_the_chat_is_one_sentence(app_url, client):
    # json.dumps escapes a lone surrogate as \\ud800, which the server's JSON reader turns back into one.
    for message, history in (("hi \ud800 there", []),
                             ("hi", [{"role": "user", "content": "\udfff"}, {"role": "assistant", "content": "ok"}])):
        data = json.dumps([message, history, "Be brief.", 0.7, 0.8, 20, 1.05, 4, -1, False, "", ""])
        assert error_of(raw_call(app_url, "chat", data)) == \
            "The conversation holds text that is not valid Unicode (a lone surrogate); remove it."
    still_answers(client)


@pytest.mark.parametrize("variant, sentence", [
    ('{"temperature": NaN}', "temperature must be 0 or a number between 0.01 and 2, got nan."),
    ('{"top_k": Infinity}', "top_k must be a whole number between 0 and 1,000,000, got inf."),
    ('{"seed": 1099511627776}', "seed must be a whole number between 0 and 4,294,967,295, got 1099511627776."),
])
def test_compare_numbers_out_of_range_are_one_sentence(app_url, client, variant, sentence):
    # The variants are JSON text inside the request: the page's parser reads NaN and Infinity as Python does.
    error = error_of(raw_call(app_url, "compare", json.dumps(["Hi", f"[{{}}, {variant}]"])))
    assert error == f"Variant 'B' has an invalid sampling setting: {sentence}", error
    assert error_of(raw_call(app_url, "compare", json.dumps(["\ud83d", "[{}, {}]"]))) == \
        "The input holds text that is not valid Unicode (a lone surrogate); remove it."
    still_answers(client)


@pytest.mark.parametrize("form, sentence", [
    ({"shots": "Infinity"}, "Shots must be a whole number between 0 and 5, got inf."),
    ({"shots": "2.5"}, "Shots must be a whole number between 0 and 5, got 2.5."),
    ({"seed": str(10**30)}, "The seed must be a whole number between 0 and 4,294,967,295"),
    ({"seed": "NaN"}, "The seed must be a whole number between 0 and 4,294,967,295, got nan."),
    ({"limit": "-3"}, "The limit (0 for everything) must be a whole number between 0 and 1,000,000,000, got -3."),
    ({"limit": "Infinity"}, "The limit (0 for everything) must be a whole number between 0 and 1,000,000,000, got inf."),
])
def test_evaluate_numbers_out_of_range_are_one_sentence(app_url, client, data_dir, form, sentence):
    values = {"shots": "0", "limit": "4", "seed": "1234", **form}
    error = error_of(raw_call(app_url, "evaluate", f'["mmlu", "none", "logprob", {values["shots"]}, '
                                                   f'{values["limit"]}, {values["seed"]}]'))
    # A box that declares its own bounds (Shots 0-5) answers first, in Gradio's own sentence.
    gradios = re.fullmatch(r"Value \S+ is (greater|less) than (maximum|minimum) value \d+\.", error)
    assert error.startswith(sentence) or gradios, error
    still_answers(client)


def test_a_failed_model_swap_is_an_error_and_the_old_model_keeps_serving(client):
    with pytest.raises(Exception) as e:
        client.predict("no/such-model", "auto", None, api_name="/load_model")
    assert "no/such-model" in str(e.value) and "the previous model (tiny-random) is loaded again" in str(e.value)
    error = error_of(raw_call(client.src if client.src.endswith("/") else client.src + "/", "load_model",
                              '["tiny-random", "auto", Infinity]'))
    assert error == "Context tokens must be a whole number between 512 and 1,048,576, got inf.", error
    assert client.predict(api_name="/model_info")["name"] == "tiny-random"
    still_answers(client)
