"""Switching models drops the old one first, and a failed switch brings the previous one back."""

from __future__ import annotations

import gc
import weakref

import pytest

from lab.errors import LabError
from lab.session import LoadRequest, ModelManager


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
