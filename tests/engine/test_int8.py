"""LLM.int8 without host reads (`lab.int8`) gives bitsandbytes' own answers, on the CPU.

bitsandbytes runs LLM.int8 on a CPU with the same operators as on CUDA (quantize, int8 product,
dequantize, outlier columns in 16 bits), so these checks compare `Int8Linear` against
`Linear8bitLt.forward` itself: one row and several, with and without outlier columns, fused q/k/v,
too few outlier slots noticed and widened, and the decode step of an int8 tiny-random against the
plain int8 forward pass. The CUDA run of the same comparison is in `lab/bench/agree.py` (agree case).
"""

from __future__ import annotations

import copy

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")  # in the test extra; the CPU build is enough

from lab.engine.decoder import StaticDecoder  # noqa: E402
from lab.engine.fastpath import FastPath  # noqa: E402
from lab.engine.kernels.int8 import Int8Linear, counters, is_int8_linear, products, slots, weights  # noqa: E402
from lab.engine.layers import is_int8, unfuse_projections  # noqa: E402
from lab.engine.sampling import sampler_for  # noqa: E402
from lab.interface import SamplingParams  # noqa: E402
from tests.engine.test_decoder import teacher_forced  # noqa: E402


def int8_layer(n_in: int, n_out: int, bias: bool = True, threshold: float = 6.0, seed: int = 0):
    torch.manual_seed(seed)
    plain = torch.nn.Linear(n_in, n_out, bias=bias).half()
    layer = bnb.nn.Linear8bitLt(n_in, n_out, bias=bias, has_fp16_weights=False, threshold=threshold)
    layer.load_state_dict(plain.state_dict())
    return layer.to("cpu").eval()  # quantizes the weight rows; eval: the inference path, as in a loaded model


def inputs(rows: int, n_in: int, outliers: dict[tuple[int, int], float], seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n_in, generator=g).half()
    for (r, c), v in outliers.items():
        x[r, c] = v
    return x


def seen() -> torch.Tensor:
    return torch.zeros((), dtype=torch.long)


@pytest.mark.parametrize("rows,outliers", [
    (1, {}), (1, {(0, 5): 9.0, (0, 40): -7.5}), (3, {}), (3, {(0, 5): 9.0, (2, 17): -12.0, (1, 63): 6.0}),
], ids=["one-row", "one-row-outliers", "rows", "rows-outliers"])
def test_int8_linear_equals_bitsandbytes(rows, outliers):
    layer = int8_layer(64, 48)
    x = inputs(rows, 64, outliers)
    with torch.no_grad():
        want = layer(x)
    count = seen()
    got = Int8Linear.of([layer], count)(x)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want), (got - want).abs().max()  # the same operators: bit for bit on a CPU
    assert int(count) == len({c for _, c in outliers})
    # Leaving the outlier columns out of the 16-bit part would be visibly wrong: the check can fail.
    if outliers:
        dropped = Int8Linear.of([layer], seen(), slots=1)(x)
        assert not torch.allclose(dropped.float(), want.float(), atol=2e-3, rtol=1e-3)


def test_fused_projections_equal_each_layer():
    layers = [int8_layer(64, n, seed=s) for s, n in enumerate((48, 16, 16))]
    x = inputs(2, 64, {(1, 3): 8.0})
    with torch.no_grad():
        want = [m(x) for m in layers]
    fused = Int8Linear.of(layers, seen())
    got = fused(x).split([48, 16, 16], dim=-1)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    # the modules now hold views of the fused rows, and their own forward still gives the same answer
    for m, w in zip(layers, want):
        assert weights(m)[0].data_ptr() >= fused.cb.data_ptr()
        with torch.no_grad():
            assert torch.equal(m(x), w)


def test_too_few_slots_are_counted_and_widening_restores_the_answer():
    layer = int8_layer(64, 32)
    x = inputs(1, 64, {(0, c): 10.0 for c in (1, 9, 20, 33, 50)})
    with torch.no_grad():
        want = layer(x)
    count = seen()
    lin = Int8Linear.of([layer], count, slots=2)
    assert not torch.allclose(lin(x).float(), want.float(), atol=2e-3, rtol=1e-3)
    assert int(count) == 5 > lin.slots
    lin.widen()
    lin.widen()
    assert lin.slots == 8
    assert torch.equal(lin(x), want)


def int8_model(tiny, threshold: float):
    """tiny-random in fp16 with every projection of its layers an LLM.int8 `Linear8bitLt`."""
    model = copy.deepcopy(tiny.model)
    unfuse_projections(model)  # other tests may have fused the shared model's layers
    model = model.half().eval()
    for layer in model.model.layers:
        for owner in (layer.self_attn, layer.mlp):
            for name, m in list(owner.named_children()):
                if type(m) is torch.nn.Linear:
                    q = bnb.nn.Linear8bitLt(m.in_features, m.out_features, bias=m.bias is not None,
                                            has_fp16_weights=False, threshold=threshold)
                    q.load_state_dict(m.state_dict())
                    setattr(owner, name, q.to("cpu").eval())
    model.is_loaded_in_8bit = True
    return model


def test_int8_decode_step_matches_the_plain_int8_forward(tiny):
    # A low threshold makes outlier columns common in tiny-random, so both halves of every product count.
    model = int8_model(tiny, threshold=0.5)
    assert is_int8(model) and is_int8_linear(model.model.layers[0].mlp.down_proj)
    prompt = tiny.encode(tiny.render([{"role": "user", "content": "Name three rivers."}]))
    forced = tiny.encode(" The Nile, the Amazon and the Yangtze 长江.")[:12]
    dec = StaticDecoder(model, batch=1, max_len=128, graphs=False)
    got = teacher_forced(dec, [prompt], [forced])[0]
    with torch.inference_mode():
        want = model(torch.tensor([prompt + forced])).logits[0, len(prompt) - 1:-1].float()
    assert counters(model)[0] > 0  # outliers did take the 16-bit way
    assert not dec.outliers_clipped()
    # fp16 with int8 products: rounding differs by kernel shape (one row vs a whole sequence); measured 5e-4 of 0.91
    assert (got - want).abs().max() <= 2e-3 * want.abs().max(), (got - want).abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9


def test_fast_path_widens_slots_after_a_clipped_reply(tiny):
    model = int8_model(tiny, threshold=0.5)
    path = FastPath(model, tiny.eos_ids, tiny.pad_id)
    path.decoder(1, 64)  # builds the products
    for p in products(model):
        p.slots, p.rank = 1, torch.arange(1)
    prompt = tiny.encode("Count to ten: one two three")
    res = path.decode([prompt], sampler_for(SamplingParams(temperature=0.0, max_new_tokens=6), tiny.eos_ids), 6)
    assert res.clipped and path.clipped
    with pytest.warns(UserWarning, match="outlier columns"):
        path.decoder(1, 64)
    assert slots(model) == 2 and not path.clipped
