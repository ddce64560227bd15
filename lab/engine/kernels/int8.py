"""LLM.int8 matrix products that a CUDA graph can capture, with bitsandbytes' own arithmetic.

bitsandbytes' `Linear8bitLt` splits every product in two: the input's columns that hold a value of
at least the threshold (6.0) are multiplied in 16 bits against the dequantized weight columns, the
rest is quantized row-wise to int8 and multiplied in int8. It finds those outlier columns with
`outliers.any()` and `argwhere`, which read back to the host inside every call (196 per token for a
7B model), so a decode step built from it cannot be captured as a CUDA graph and runs at the speed
of Python launching kernels.

`Int8Linear` does the same arithmetic with no host read: the same quantize, int8 matmul and
dequantize operators of bitsandbytes, with the outlier columns found on the device into a fixed
number of slots (`torch.nonzero_static`). Unused slots multiply zeros. Each call records the most
outlier columns it saw in a shared device counter, and sets a shared device flag if it had more than
its own slots; the decoder reads the flag after the reply (`FastPath` then builds wider ones).
The model's products are found again by `products(model)`, their slots counted and widened here too.
With LAB_KERNELS=lab, products of up to 64 rows (the decode step's) run `int8_mm`'s fused kernels instead: the
same arithmetic in three launches, and every column read, so no slots to outgrow.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lab.engine.kernels import int8_mm, nf4

OUTLIER_SLOTS = 128  # outlier columns per product at decode batch sizes; Transformers-era LLMs show a handful


def is_int8_linear(module) -> bool:
    return type(module).__name__ == "Linear8bitLt" and hasattr(module, "state")


def weights(module) -> tuple[torch.Tensor, torch.Tensor]:
    """A `Linear8bitLt`'s int8 rows (CB) and their scales (SCB), wherever bitsandbytes keeps them now."""
    if getattr(module.weight, "CB", None) is not None:
        module.init_8bit_state()  # what its first forward would do
    return module.state.CB, module.state.SCB


class Int8Linear:
    """x @ W.T + b as bitsandbytes computes it for `Linear8bitLt`, for up to `slots` outlier columns."""

    def __init__(self, cb: torch.Tensor, scb: torch.Tensor, bias: torch.Tensor | None, threshold: float,
                 seen: torch.Tensor, slots: int = OUTLIER_SLOTS, over: torch.Tensor | None = None) -> None:
        self.cb, self.scb, self.bias, self.threshold = cb, scb, bias, float(threshold)
        self.slots = min(slots, cb.shape[1])
        self.seen = seen  # int64 [] on the device: the most outlier columns any call has had
        self.over = over  # bool [] on the device, if given: set when a call had more than its own slots
        self.rank = torch.arange(self.slots, device=cb.device)

    @classmethod
    def of(cls, modules: Sequence, seen: torch.Tensor, slots: int = OUTLIER_SLOTS,
           over: torch.Tensor | None = None) -> "Int8Linear":
        """One product for several layers that read the same input (q/k/v, gate/up): their int8 rows
        are concatenated, and each module's weight becomes a view of its rows (no extra memory once the
        old tensors are freed; the modules' own forward keeps working on the views)."""
        pairs = [weights(m) for m in modules]
        thresholds = {m.state.threshold for m in modules}
        assert len(thresholds) == 1, thresholds
        biases = [m.bias for m in modules]
        if len(modules) == 1:
            cb, scb = pairs[0]
            return cls(cb, scb, biases[0], thresholds.pop(), seen, slots, over)
        if any(b is None for b in biases) and not all(b is None for b in biases):
            raise ValueError("some of these layers have a bias and some do not")
        sizes = [rows.shape[0] for rows, _ in pairs]
        with torch.no_grad():
            cb = torch.cat([p[0] for p in pairs])
            scb = torch.cat([p[1] for p in pairs])
            bias = None if biases[0] is None else torch.cat([b.data for b in biases])
            parts = bias.split(sizes) if bias is not None else [None] * len(modules)
            for m, rows, scales, b in zip(modules, cb.split(sizes), scb.split(sizes), parts):
                m.state.CB = m.weight.data = rows
                m.state.SCB = scales
                if b is not None:
                    m.bias.data = b
        return cls(cb, scb, bias, thresholds.pop(), seen, slots, over)

    def widen(self) -> None:
        self.slots = min(2 * self.slots, self.cb.shape[1])
        self.rank = torch.arange(self.slots, device=self.cb.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = x.reshape(-1, x.shape[-1])
        if nf4.kernels() == "lab" and int8_mm.supports(self.cb, self.scb, a) is None:  # decode rows, one pass
            out = int8_mm.int8_matmul(a, self.cb, self.scb, self.bias, self.threshold, self.seen)
            return out.view(*x.shape[:-1], out.shape[-1])
        return self.ops(x)

    def ops(self, x: torch.Tensor) -> torch.Tensor:
        """The product through bitsandbytes' operators, whatever LAB_KERNELS says."""
        ops = torch.ops.bitsandbytes
        shape = x.shape
        a = x.reshape(-1, shape[-1])
        a16 = a.to(torch.float16)
        big = a16.abs() >= self.threshold
        cols = big.any(dim=0)
        # bitsandbytes' quantizer with a threshold leaves the outliers out of each row's scale and zeroes
        # them; with them zeroed first, the threshold-free quantizer gives the same int8 rows and scales.
        ca, sca, _ = ops.int8_vectorwise_quant.default(a16.masked_fill(big, 0), 0.0)
        if a.shape[0] > 1:
            ca = ca.masked_fill(cols, 0)  # the whole outlier column goes the 16-bit way, as in bitsandbytes
        out = ops.int8_mm_dequant.default(ops.int8_linear_matmul.default(ca, self.cb), sca, self.scb,
                                          dtype=torch.float16, bias=self.bias)
        out = out.to(a.dtype)
        # The outlier columns in 16 bits: a[:, cols] @ dequantized W[:, cols].T, in fixed slots.
        idx = torch.nonzero_static(cols, size=self.slots, fill_value=0).squeeze(1)
        count = cols.sum()
        sub_a = a.index_select(1, idx) * (self.rank < count).to(a.dtype)
        sub_b = ops.int8_vectorwise_dequant.default(self.cb.index_select(1, idx), self.scb).to(a.dtype)
        out = out.addmm(sub_a, sub_b.t())
        torch.maximum(self.seen, count, out=self.seen)
        if self.over is not None:
            self.over.logical_or_(count > self.slots)
        return out.view(*shape[:-1], out.shape[-1])


def counters(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's shared device counters: (most outlier columns any product saw, a product had more than its
    slots); made on first use."""
    if getattr(model, "lab_int8_seen", None) is None:
        dev = model.lm_head.weight.device
        model.lab_int8_seen = torch.zeros((), dtype=torch.long, device=dev)
        model.lab_int8_over = torch.zeros((), dtype=torch.bool, device=dev)
    return model.lab_int8_seen, model.lab_int8_over


def products(model) -> list[Int8Linear]:
    """Every `Int8Linear` the engine gave the model's layers (fused q/k/v and gate/up, o and down)."""
    found = []
    for layer in model.model.layers:
        for owner, name in ((layer.self_attn, "lab_qkv"), (layer.mlp, "lab_gate_up")):
            fused = getattr(owner, name, None)
            if fused is not None and isinstance(fused[0], Int8Linear):
                found.append(fused[0])
        for m in (layer.self_attn.o_proj, layer.mlp.down_proj):
            if getattr(m, "lab_int8", None) is not None:
                found.append(m.lab_int8)
    return found


def slots(model) -> int:
    """The fewest outlier slots of any product in the decode step."""
    return min((p.slots for p in products(model)), default=0)


def widen(model) -> int:
    """Double every product's outlier slots (up to its width); only with no captured graph alive."""
    for p in products(model):
        p.widen()
    return slots(model)
