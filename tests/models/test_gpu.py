"""CUDA-only checks of the model layer: bitsandbytes loading, streaming, Stop and freeing memory.

Run on a GPU machine: python -m pytest -m gpu tests/test_gpu.py
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lab.interface import SamplingParams
from lab.models import load_model
from lab.models.manager import LoadRequest, ModelManager

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MESSAGES = [{"role": "user", "content": "Count to ten."}]


@pytest.mark.parametrize("quant, detail", [("4bit", "NF4"), ("8bit", "LLM.int8"), ("bf16", "")])
def test_quantized_load_streams_on_cuda(quant, detail):
    model = load_model("tiny-random", quant=quant)
    try:
        assert model.info.quant == quant and model.info.device == "cuda:0"
        assert detail in model.info.quant_detail
        assert model.info.weight_bytes > 0
        if quant == "4bit":
            import bitsandbytes as bnb

            assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.model.modules())
        chunks = list(model.stream_chat(MESSAGES, SamplingParams(max_new_tokens=16, seed=0, ignore_eos=True)))
        stats = chunks[-1].stats
        assert stats.completion_tokens == 16 and stats.gpu_mem_peak_gib > 0
    finally:
        model.close()


def test_auto_picks_4bit_for_7b_on_cuda():
    from lab.models import REGISTRY, resolve_quant

    assert resolve_quant("auto", REGISTRY["Qwen2.5-7B-Instruct"], "cuda") == ("4bit", [])


def test_stop_ends_generation_on_cuda():
    model = load_model("tiny-random", quant="4bit")
    try:
        cancel = threading.Event()
        stream = model.stream_chat(MESSAGES, SamplingParams(max_new_tokens=3000, seed=0, ignore_eos=True), cancel)
        next(stream)
        cancel.set()
        t = time.perf_counter()
        stats = [c.stats for c in stream if c.stats][0]
        assert time.perf_counter() - t < 1.0
        assert stats.finish_reason == "cancelled" and stats.completion_tokens < 3000
    finally:
        model.close()


def test_switching_models_frees_gpu_memory():
    base = torch.cuda.memory_allocated()
    manager = ModelManager()
    manager.load(LoadRequest("tiny-random", "bf16"))
    first = torch.cuda.memory_allocated()
    assert first > base
    manager.load(LoadRequest("tiny-random", "4bit"))
    manager.unload()
    assert torch.cuda.memory_allocated() - base < 1 << 20


def test_int8_products_without_host_reads_equal_bitsandbytes_on_cuda():
    import bitsandbytes as bnb

    from lab.engine.kernels.int8 import Int8Linear

    torch.manual_seed(0)
    plain = torch.nn.Linear(512, 384).half()
    layer = bnb.nn.Linear8bitLt(512, 384, has_fp16_weights=False, threshold=6.0)
    layer.load_state_dict(plain.state_dict())
    layer = layer.cuda().eval()
    for rows in (1, 4):
        x = torch.randn(rows, 512, device="cuda").half()
        x[0, 7], x[rows - 1, 300] = 9.0, -14.0
        with torch.inference_mode():
            want = layer(x)
            got = Int8Linear.of([layer], torch.zeros((), dtype=torch.long, device="cuda"))(x)
        assert (got - want).abs().max() <= 1e-3 * want.abs().max(), (got - want).abs().max()
