"""JSON mode: the constraint, not the model, makes every reply parse and validate."""

import json

import pytest

from lab.chat.json_mode import response_format, validate
from lab.errors import LabError
from lab.interface import SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "scores": {"type": "array", "items": {"type": "integer"}}},
    "required": ["name", "scores"],
}
ASK = [{"role": "user", "content": "Describe a student as JSON with a name and a list of integer scores."}]


def reply(model, params) -> tuple[str, object]:
    chunks = list(model.stream_chat(ASK, params))
    return "".join(c.text for c in chunks), chunks[-1].stats


@pytest.mark.slow
def test_a_schema_is_met_in_20_of_20_seeded_runs_and_fails_without_it(tiny):
    fmt = response_format(True, json.dumps(SCHEMA))
    free_parses = 0
    for seed in range(20):
        # The page's sampling defaults: random weights would never write JSON by themselves.
        text, stats = reply(tiny, SamplingParams(seed=seed, max_new_tokens=128, response_format=fmt))
        check = validate(text, fmt)
        assert check.parses and check.valid, f"seed {seed}: {check.summary()} in {text!r}"
        assert set(check.parsed) >= {"name", "scores"} and all(isinstance(x, int) for x in check.parsed["scores"])
        assert stats.completion_tokens <= 128
        free_text, _ = reply(tiny, SamplingParams(seed=seed, max_new_tokens=128))
        free_parses += validate(free_text, fmt).parses
    assert free_parses == 0  # the same seeds without the constraint: noise, never JSON


def test_json_mode_without_a_schema_gives_a_json_value(tiny):
    fmt = response_format(True)
    assert fmt == {"type": "json_object"}
    for seed in range(3):
        text, _ = reply(tiny, SamplingParams(seed=seed, max_new_tokens=64, response_format=fmt))
        check = validate(text, fmt)
        assert check.parses and check.valid is None, check.summary()


def test_greedy_and_batched_generation_are_constrained_too(tiny):
    fmt = response_format(True, json.dumps(SCHEMA))
    outs = tiny.generate([ASK, ASK + [{"role": "user", "content": "again"}]],
                         SamplingParams(temperature=0, max_new_tokens=96, response_format=fmt))
    for out in outs:
        assert validate(out.text, fmt).valid, out.text


def test_a_small_budget_closes_the_document_early_and_says_so(tiny):
    fmt = response_format(True, json.dumps(SCHEMA))
    text, stats = reply(tiny, SamplingParams(seed=1, max_new_tokens=48, response_format=fmt))
    assert validate(text, fmt).valid, text
    assert stats.closed_early and stats.completion_tokens <= 48


@pytest.mark.parametrize("schema_text, message", [
    ('{"type": "object", "properties": ', r"not valid JSON \(line 1, column 33: Expecting value"),
    ('["not", "an", "object"]', "must be a JSON object"),
    ('{"type": "objekt"}', "invalid at type"),
    ('{"type": "object", "required": "name"}', "invalid at required"),
])
def test_an_invalid_schema_is_one_sentence_before_generation(schema_text, message):
    with pytest.raises(LabError, match=message) as e:
        response_format(True, schema_text)
    assert "\n" not in str(e.value)


def test_response_format_shapes():
    assert response_format(False) is None and response_format(False, "  ") is None
    fmt = response_format(False, json.dumps(SCHEMA))  # a schema alone turns JSON mode on
    assert fmt == {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}}


def test_validate_reports_parse_errors_and_schema_mismatches():
    fmt = response_format(True, json.dumps(SCHEMA))
    assert validate('{"name": "李雷", "scores": [90, 85]}', fmt).valid
    bad = validate('{"name": "李雷", "scores": ["90"]}', fmt)
    assert bad.parses and bad.valid is False and "scores/0" in bad.errors[0]
    missing = validate('{"name": "x"}', fmt)
    assert missing.valid is False and "'scores' is a required property" in missing.summary()
    broken = validate('{"name": ', fmt)
    assert not broken.parses and broken.summary().startswith("✗ not valid JSON")


def test_stop_ends_a_constrained_reply_at_once(tiny):
    import threading

    cancel = threading.Event()
    fmt = response_format(True, json.dumps(SCHEMA))
    chunks = []
    for chunk in tiny.stream_chat(ASK, SamplingParams(seed=2, max_new_tokens=2000, response_format=fmt), cancel):
        chunks.append(chunk)
        if len(chunks) == 3:
            cancel.set()  # what the Stop button does
    stats = chunks[-1].stats
    assert stats.finish_reason == "cancelled" and stats.completion_tokens < 50


def test_the_model_layer_renders_tools_into_the_prompt(tiny):
    tools = [{"type": "function", "function": {"name": "get_time", "description": "现在几点",
                                                "parameters": {"type": "object", "properties": {}}}}]
    plain, with_tools = tiny.render(ASK), tiny.render(ASK, tools=tools)
    assert "<tools>" not in plain and "<tools>" in with_tools and '"name": "get_time"' in with_tools
    assert "现在几点" in with_tools and with_tools.endswith("<|im_start|>assistant\n")
    assert tiny.count_chat_tokens(ASK, tools) > tiny.count_chat_tokens(ASK)
