"""Incremental detokenization and stop strings, on literal strings and the real tokenizer."""

from __future__ import annotations

import pytest

from lab.models.hf.decoding import IncrementalDecoder, StopMatcher, cut_at_stop


@pytest.mark.parametrize("text", [
    "你好，世界！这是一个测试。",
    "Mixed 中英文 text with emoji 🙂🚀 and code:\n```python\ndef f():\n    return '€'\n```",
    "",
])
def test_streamed_deltas_add_up_to_the_full_decode(qwen_tokenizer, text):
    ids = qwen_tokenizer(text, add_special_tokens=False)["input_ids"]
    dec = IncrementalDecoder(qwen_tokenizer)
    deltas = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(deltas) == qwen_tokenizer.decode(ids)
    assert not any("\ufffd" in d for d in deltas)  # a split character is never shown half-done


def test_a_character_cut_off_at_the_end_is_dropped(qwen_tokenizer):
    ids = qwen_tokenizer("好𓀀", add_special_tokens=False)["input_ids"]
    assert len(ids) == 4  # 好, then three byte-level pieces of one hieroglyph
    dec = IncrementalDecoder(qwen_tokenizer)
    assert "".join(dec.push(i) for i in ids[:-1]) + dec.flush() == "好"


def test_special_tokens_are_not_shown(qwen_tokenizer):
    ids = qwen_tokenizer("Hi<|im_end|>", add_special_tokens=False)["input_ids"]
    dec = IncrementalDecoder(qwen_tokenizer)
    assert "".join(dec.push(i) for i in ids) + dec.flush() == "Hi"


def test_stop_matcher_holds_back_a_possible_stop_and_cuts_at_it():
    m = StopMatcher(("</answer>",))
    assert m.feed("The answer is 4</an") == "The answer is 4"  # "</an" may begin the stop string
    assert not m.hit
    assert m.feed("swer> and more") == ""
    assert m.hit and m.feed("anything") == "" and m.flush() == ""


def test_stop_matcher_releases_a_false_alarm():
    m = StopMatcher(("STOP",))
    assert m.feed("ST") == ""
    assert m.feed("ART here") == "START here"
    assert m.flush() == ""


def test_stop_matcher_without_stops_passes_everything():
    m = StopMatcher(())
    assert m.feed("abc") == "abc" and m.flush() == ""


def test_cut_at_stop_takes_the_earliest():
    assert cut_at_stop("a\n\nb###c", ("###", "\n\n")) == ("a", True)
    assert cut_at_stop("abc", ("x",)) == ("abc", False)
