"""Switching models drops the old one first, and a failed switch brings the previous one back."""

from __future__ import annotations

import gc
import weakref

import pytest

from lab.errors import LabError
from lab.models.manager import LoadRequest, ModelManager


def test_switching_frees_the_previous_model():
    manager = ModelManager()
    first = manager.load(LoadRequest("tiny-random"))
    weights = weakref.ref(first.model)
    del first
    manager.load(LoadRequest("tiny-random", quant="bf16"))
    gc.collect()
    assert weights() is None  # nothing holds the old weights any more
    assert manager.model.info.quant == "bf16"


def test_a_failed_switch_restores_the_previous_model():
    manager = ModelManager()
    manager.load(LoadRequest("tiny-random"))
    with pytest.raises(LabError) as e:
        manager.load(LoadRequest("not a model"))
    assert "the previous model (tiny-random) is loaded again" in str(e.value)
    assert manager.model.info.name == "tiny-random" and manager.request.model == "tiny-random"


def test_no_model_is_a_clear_sentence():
    with pytest.raises(LabError, match="No model is loaded"):
        ModelManager().model


def test_context_above_the_models_own_uses_yarn_and_a_long_prompt_runs():
    from lab.interface import SamplingParams

    manager = ModelManager()
    model = manager.load(LoadRequest("tiny-random", context=8192))  # tiny-random's own context is 4,096
    assert model.info.context_length == 8192
    assert model.model.config.rope_parameters["rope_type"] == "yarn"
    assert model.model.config.rope_parameters["factor"] == 2.0
    assert any("YaRN" in note for note in model.info.notes)
    words = 5000 * 5000 // model.count_tokens("word " * 5000)  # about 5,000 tokens, either tokenizer
    long = [{"role": "user", "content": "word " * words}]
    assert model.count_chat_tokens(long) > 4096
    stats = list(model.stream_chat(long, SamplingParams(max_new_tokens=4, seed=0, ignore_eos=True)))[-1].stats
    assert stats.completion_tokens == 4


def test_context_below_the_models_own_caps_the_budget():
    model = ModelManager().load(LoadRequest("tiny-random", context=1024))
    assert model.info.context_length == 1024
    assert model.model.config.rope_parameters["rope_type"] == "default"
    with pytest.raises(LabError, match="at least 512 tokens"):
        ModelManager().load(LoadRequest("tiny-random", context=100))
