"""The manager holds Compare's models beside the page's: what a variant's model resolves to and would take before
it loads, holding and freeing them, and unload freeing them all."""

from __future__ import annotations

import gc
import weakref

import pytest

from lab.errors import LabError
from lab.models.manager import BYTES_PER_PARAM, LoadRequest, ModelManager, estimate_bytes


@pytest.fixture
def manager():
    m = ModelManager()
    m.load(LoadRequest("tiny-random"))  # fp32 on a CPU
    yield m
    m.unload()


def test_a_variant_naming_the_pages_model_gets_it_and_another_quant_is_estimated_before_loading(manager):
    same = manager.want("tiny-random", None)
    assert same.key == manager.main_key() == "tiny-random · fp32" and same.bytes == manager.model.info.weight_bytes
    assert manager.want(None, "fp32").key == same.key  # only a quantization: the page's model in it
    bf16 = manager.want("tiny-random", "bf16")
    assert bf16.key == "tiny-random · bf16" and bf16.request.quant == "bf16"
    loaded = manager.hold(bf16)
    # the estimate (parameters on disk x 2 bytes, plus room for a reply) is within 20% of what loaded
    assert 0.95 * loaded.info.weight_bytes <= bf16.bytes <= 1.2 * loaded.info.weight_bytes
    assert manager.held() == {"tiny-random · fp32": manager.model.info.weight_bytes,
                              "tiny-random · bf16": loaded.info.weight_bytes}
    assert manager.hold(bf16) is loaded and manager.hold(same) is manager.model  # held, not loaded again


def test_release_and_unload_free_what_compare_held(manager):
    held = manager.hold(manager.want("tiny-random", "bf16"))
    weights = weakref.ref(held.model)
    del held
    manager.release("tiny-random · bf16")
    gc.collect()
    assert weights() is None and list(manager.held()) == ["tiny-random · fp32"]
    manager.hold(manager.want("tiny-random", "bf16"))
    manager.unload()
    assert manager.held() == {} and not manager.loaded


def test_a_bad_model_or_quantization_is_one_sentence_before_anything_loads(manager):
    with pytest.raises(LabError, match="not a known model name"):
        manager.want("no such model", None)
    with pytest.raises(LabError, match="bitsandbytes, which needs an NVIDIA GPU"):
        manager.want("tiny-random", "4bit")
    with pytest.raises(LabError, match="Unknown quantization"):
        manager.want("tiny-random", "int3")
    assert list(manager.held()) == ["tiny-random · fp32"]


def test_estimates_scale_with_the_quantization_and_free_memory_is_read():
    from lab.models import REGISTRY

    spec = REGISTRY["Qwen2.5-7B-Instruct"]  # not in this machine's cache: the registry's parameter count
    bf16, nf4 = estimate_bytes(spec, "bf16"), estimate_bytes(spec, "4bit")
    assert 15e9 < bf16 < 20e9 and abs(nf4 / bf16 - BYTES_PER_PARAM["4bit"] / 2) < 1e-6
    free = ModelManager().free_bytes()
    assert free is None or free > 0
