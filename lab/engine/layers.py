"""The pieces of a Qwen2/Llama-style decoder layer the engine runs itself, and the ONE layer forward that the
decode step, the captured prompt step and the shared-prefix scoring forward all use.

A layer's modules stay the model's own (embeddings, norms' weights, projections, MLPs), so bitsandbytes'
NF4 layers work unchanged; what is written here is the arithmetic between them: rotary, RMSNorm in three
kernels, q/k/v and gate/up as one product each, and attention, which each caller brings (`attend`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from lab.engine.kernels import int8, nf4

KNOWN = ("qwen2", "llama", "mistral", "qwen3")


def supported(model) -> str | None:
    """None when the engine can run `model`; else the reason it cannot."""
    cfg = model.config
    if getattr(cfg, "model_type", "") not in KNOWN:
        return f"the fast path knows Qwen2/Llama-style decoders, not {getattr(cfg, 'model_type', '?')}"
    if getattr(cfg, "use_sliding_window", False) and getattr(cfg, "sliding_window", None):
        return "sliding-window attention is not implemented in the fast path"
    rope_cfg = getattr(cfg, "rope_parameters", None) or {}
    if rope_cfg.get("rope_type", "default") not in ("default", "yarn", "linear"):
        return f"{rope_cfg['rope_type']} RoPE scaling changes with length, which the fast path does not follow"
    return None


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_bytes_per_token(config) -> int:
    """Keys and values of one token over all layers, in 16 bits."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim(config) * 2


def is_int8(model) -> bool:
    return bool(getattr(model, "is_loaded_in_8bit", False))


@dataclass(frozen=True)
class Heads:
    n_heads: int
    n_kv: int
    dim: int

    @classmethod
    def of(cls, config) -> "Heads":
        return cls(config.num_attention_heads, config.num_key_value_heads, head_dim(config))

    @property
    def group(self) -> int:
        """Query heads per key head (grouped-query attention)."""
        return self.n_heads // self.n_kv


# ---- rotary ------------------------------------------------------------------------------------------
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(positions: torch.Tensor, rotary, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Transformers' rotary cos and sin ([..., head_dim], in `dtype`) for `positions` [...], from the model's
    `rotary_emb` (its frequencies and attention scaling: YaRN and linear scaling included). Layers take them
    shaped [rows or 1, width, 1, head_dim]: pass positions as [rows or 1, width, 1] or [width, 1]."""
    freqs = positions[..., None].float() * rotary.inv_freq.to(positions.device, torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    scale = float(getattr(rotary, "attention_scaling", 1.0))
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


# ---- norms and products ------------------------------------------------------------------------------
def rms_norm(module, x: torch.Tensor) -> torch.Tensor:
    """Transformers' RMSNorm (float32 statistics, cast back, then the weight) in three kernels, not eight."""
    y = F.rms_norm(x.float(), (x.shape[-1],), eps=module.variance_epsilon)
    return module.weight * y.to(x.dtype)


def module_norm(module, x: torch.Tensor) -> torch.Tensor:
    """The norm module itself (what a decoder built without fusing uses)."""
    return module(x)


class _Linear:
    """F.linear over a fused weight (the callable half of a fused projection)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def fuse_projections(model) -> None:
    """Give each layer one product for q, k and v and one for the MLP's gate and up projections: two
    matmuls per layer instead of five. The original modules' weights become views into the fused ones
    (the same numbers in the same memory). Plain (16/32-bit) layers use one concatenated matrix;
    LLM.int8 layers one `Int8Linear` (and o/down get one each, so the whole step can be captured);
    NF4 layers stay as they are."""
    counters = int8.counters(model) if is_int8(model) else None
    for layer in model.model.layers:
        attn, mlp_ = layer.self_attn, layer.mlp
        if getattr(attn, "lab_qkv", None) is None:
            attn.lab_qkv = _fused([attn.q_proj, attn.k_proj, attn.v_proj], counters)
        if getattr(mlp_, "lab_gate_up", None) is None:
            mlp_.lab_gate_up = _fused([mlp_.gate_proj, mlp_.up_proj], counters)
        if counters is not None:
            for m in (attn.o_proj, mlp_.down_proj):
                if getattr(m, "lab_int8", None) is None and int8.is_int8_linear(m):
                    m.lab_int8 = int8.Int8Linear.of([m], counters[0], over=counters[1])


def unfuse_projections(model) -> None:
    """Forget the fused products (a copy of a model must, before its dtype or its layers change)."""
    for layer in model.model.layers:
        for owner in (layer.self_attn, layer.mlp, layer.self_attn.o_proj, layer.mlp.down_proj):
            for name in ("lab_qkv", "lab_gate_up", "lab_int8"):
                owner.__dict__.pop(name, None)


def _fused(mods: list, counters: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[Callable, list[int]] | None:
    sizes = [m.out_features for m in mods]
    if counters is not None and all(int8.is_int8_linear(m) for m in mods):
        return int8.Int8Linear.of(mods, counters[0], over=counters[1]), sizes
    if not all(type(m) is torch.nn.Linear for m in mods):
        return None
    with torch.no_grad():
        weight = torch.cat([m.weight for m in mods])
        bias = torch.cat([m.bias for m in mods]) if all(m.bias is not None for m in mods) else None
        if any(m.bias is not None for m in mods) and bias is None:
            return None
        for m, rows, b in zip(mods, weight.split(sizes), bias.split(sizes) if bias is not None else [None] * len(mods)):
            m.weight.data = rows
            if b is not None:
                m.bias.data = b
    return _Linear(weight, bias), sizes


def linear(module, x: torch.Tensor) -> torch.Tensor:
    own = getattr(module, "lab_int8", None)
    if own is None and nf4.kernels() == "lab" and nf4.supports(module, x) is None:  # NF4 decode: issue 19's kernel
        return nf4.nf4_matmul(x, module)
    return module(x) if own is None else own(x)


def project_qkv(attn, x: torch.Tensor):
    fused = getattr(attn, "lab_qkv", None)
    if fused is None:  # through linear(): NF4 layers may take the lab kernel
        return linear(attn.q_proj, x), linear(attn.k_proj, x), linear(attn.v_proj, x)
    fn, sizes = fused
    return fn(x).split(sizes, dim=-1)


def mlp(module, x: torch.Tensor) -> torch.Tensor:
    fused = getattr(module, "lab_gate_up", None)
    if fused is None:  # through linear(): NF4 layers may take the lab kernel
        return linear(module.down_proj, module.act_fn(linear(module.gate_proj, x)) * linear(module.up_proj, x))
    fn, sizes = fused
    gate, up = fn(x).split(sizes, dim=-1)
    return linear(module.down_proj, module.act_fn(gate) * up)


def split_heads(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: Heads):
    """Projections [b, w, heads*d] as [b, w, heads, d], with Qwen3's per-head q/k norms where the layer has them."""
    b, w = q.shape[:2]
    q, k, v = q.view(b, w, heads.n_heads, heads.dim), k.view(b, w, heads.n_kv, heads.dim), \
        v.view(b, w, heads.n_kv, heads.dim)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q, k, v


# ---- one layer ---------------------------------------------------------------------------------------
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def layer_forward(layer, i: int, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend,
                  heads: Heads, norm=rms_norm, own_products: bool = True) -> torch.Tensor:
    """Decoder layer `i` on hidden states h [b, w, hidden]: norm, q/k/v (Qwen3's q/k norms included), rotary,
    `attend(i, q, k, v)` -> [b, w, heads*d] (q, k, v as [b, w, heads, d], rotary applied), the output
    projection and residual, then norm, MLP and residual. `own_products` False: the model's own projection
    modules one by one (bitsandbytes' LLM.int8 at batch sizes the decoder's products are not sized for)."""
    attn = layer.self_attn
    x = norm(layer.input_layernorm, h)
    q, k, v = project_qkv(attn, x) if own_products else (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x))
    q, k, v = split_heads(attn, q, k, v, heads)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    o = attend(i, q, k, v)
    h = h + (linear(attn.o_proj, o) if own_products else attn.o_proj(o))
    x = norm(layer.post_attention_layernorm, h)
    return h + (mlp(layer.mlp, x) if own_products else layer.mlp(x))


def layers_forward(model, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend, heads: Heads,
                   norm=rms_norm, own_products: bool = True,
                   between: Callable[[], object] | None = None) -> torch.Tensor:
    """Every decoder layer of `model` in turn; `between()` after each but the last (a long batch's place to
    let a waiting chat step run)."""
    layers = model.model.layers
    for i, layer in enumerate(layers):
        h = layer_forward(layer, i, h, cos, sin, attend, heads, norm, own_products)
        if between is not None and i + 1 < len(layers):
            between()
    return h
