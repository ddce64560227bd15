"""Conversation logic: system prompt, turns, context trimming, sampling inputs, export, stats line."""

from __future__ import annotations

import json

import pytest

from lab.chat.conversation import (
    Conversation,
    export_conversation,
    export_json,
    fit_to_context,
    format_stats,
    parse_history,
    sampling_from_ui,
    split_turns,
    with_system,
)
from lab.errors import LabError
from lab.interface import ModelInfo, ReplyStats, SamplingParams


def words(messages):
    """A stand-in token counter: one token per word, plus four per message for the template."""
    return sum(len(m["content"].split()) + 4 for m in messages)


def history(n_turns: int, size: int = 10):
    out = []
    for i in range(n_turns):
        out += [{"role": "user", "content": f"q{i} " + "w " * size},
                {"role": "assistant", "content": f"a{i} " + "w " * size}]
    return out


def test_empty_system_prompt_adds_no_system_turn():
    assert with_system("  ", [{"role": "user", "content": "hi"}]) == [{"role": "user", "content": "hi"}]
    assert with_system("Be brief.", [])[0] == {"role": "system", "content": "Be brief."}


def test_history_from_programs_in_openai_and_gradio_shapes():
    system, msgs = parse_history([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "你好"}]},
        {"role": "assistant", "content": "Hi", "metadata": None},
    ])
    assert system == "Be brief."
    assert msgs == [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "Hi"}]
    assert parse_history(None) == (None, [])


@pytest.mark.parametrize("history", ["hi", [{"role": "bot", "content": "x"}], [{"role": "user"}],
                                     [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}]])
def test_malformed_history_is_one_sentence(history):
    with pytest.raises(LabError) as e:
        parse_history(history)
    assert str(e.value).endswith(".") and "\n" not in str(e.value)


def test_turns_start_at_user_messages():
    h = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
         {"role": "tool", "content": "c"}, {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}]
    assert [len(t) for t in split_turns(h)] == [4, 1]


def test_everything_is_kept_when_it_fits():
    h = history(3) + [{"role": "user", "content": "now"}]
    fitted = fit_to_context("sys", h, words, context_length=1000, max_new_tokens=100)
    assert fitted.dropped_turns == 0 and fitted.messages == with_system("sys", h)
    assert fitted.prompt_tokens == words(fitted.messages)


def test_oldest_turns_are_dropped_and_the_system_prompt_kept():
    h = history(5) + [{"role": "user", "content": "latest question"}]
    fitted = fit_to_context("keep me", h, words, context_length=130, max_new_tokens=50)
    assert fitted.messages[0] == {"role": "system", "content": "keep me"}
    assert fitted.messages[-1]["content"] == "latest question"
    assert fitted.dropped_turns == 3
    kept = [m["content"].split()[0] for m in fitted.messages[1:-1]]
    assert kept == ["q3", "a3", "q4", "a4"]  # the newest turns survive, in order
    assert fitted.prompt_tokens + 50 <= 130


def test_a_message_that_cannot_fit_is_one_clear_sentence():
    with pytest.raises(LabError) as e:
        fit_to_context("sys", [{"role": "user", "content": "w " * 500}], words, context_length=300, max_new_tokens=50)
    msg = str(e.value)
    assert "exceeds the model's context of 300 tokens" in msg and msg.count(".") == 1
    with pytest.raises(LabError, match="must be smaller than the model's context"):
        fit_to_context("", [], words, context_length=100, max_new_tokens=100)


def test_sampling_from_form_values():
    p = sampling_from_ui(0.5, 0.9, 40.0, 1.1, 256.0, -1)
    assert p == SamplingParams(temperature=0.5, top_p=0.9, top_k=40, repetition_penalty=1.1, max_new_tokens=256)
    assert sampling_from_ui(0, 1, 0, 1, 16, 7).seed == 7
    with pytest.raises(LabError, match="out of range: top_p"):
        sampling_from_ui(0.7, 0, 20, 1, 16, -1)


STATS = ReplyStats(prompt_tokens=12, completion_tokens=30, ttft_s=0.25, decode_tokens_per_s=41.5, total_s=1.0,
                   finish_reason="cancelled", seed=9)
INFO = ModelInfo(name="tiny-random", source="tiny-random", quant="fp32", device="cpu", context_length=4096,
                 weight_bytes=1 << 20)


def test_conversation_truncate_keeps_stats_in_step():
    conv = Conversation([{"role": "user", "content": "a"}])
    conv.add_reply("b", STATS, SamplingParams(), 0)
    conv.messages.append({"role": "user", "content": "c"})
    conv.add_reply("d", STATS, SamplingParams(), 1)
    assert sorted(conv.stats) == [1, 3] and conv.last_user_index() == 2
    conv.truncate(2)
    assert sorted(conv.stats) == [1] and len(conv.messages) == 2


def test_export_holds_messages_stats_parameters_and_model():
    conv = Conversation([{"role": "user", "content": "你好"}])
    conv.add_reply("Hello **there**", STATS, SamplingParams(seed=9), dropped_turns=2)
    record = json.loads(export_json(export_conversation(conv, "Be kind.", SamplingParams(temperature=0.2), INFO)))
    assert record["format"] == "qwen-lab.chat/1"
    assert record["model"]["name"] == "tiny-random" and record["model"]["quant"] == "fp32"
    assert record["parameters"]["temperature"] == 0.2
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert record["messages"][1]["content"] == "你好"
    reply = record["messages"][2]
    assert reply["stats"]["seed"] == 9 and reply["stats"]["dropped_turns"] == 2
    assert reply["stats"]["params"]["seed"] == 9 and reply["stats"]["completion_tokens"] == 30
    assert "你好" in export_json(record)  # readable, not \u-escaped


def test_stats_line():
    line = format_stats({**STATS.to_dict(), "dropped_turns": 2})
    assert line == ("prompt 12 tok · completion 30 tok · first token 250 ms · 41.5 tok/s · seed 9 · stopped"
                    " · 2 oldest turns dropped to fit the context")
    gpu = format_stats(ReplyStats(1, 2, None, None, 0.1, "length", 3, gpu_mem_in_use_gib=5.5, gpu_mem_peak_gib=6.0))
    assert "GPU 5.50 GiB in use (peak 6.00)" in gpu and "hit max new tokens" in gpu


def test_model_summary_line():
    assert INFO.summary() == "tiny-random · fp32 · cpu · weights 1.0 MiB · context 4,096 tokens"
    big = ModelInfo("Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "4bit", "cuda:0", 32768, int(5.18 * 2**30),
                    quant_detail="bitsandbytes NF4, bf16 compute, double quant")
    assert big.summary() == ("Qwen2.5-7B-Instruct · 4bit (bitsandbytes NF4, bf16 compute, double quant) · cuda:0 · "
                             "weights 5.18 GiB · context 32,768 tokens")
