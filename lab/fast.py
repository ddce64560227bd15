"""Fast decoding: a static KV cache, one decode step captured as a CUDA graph, and a host loop that
stays one step ahead of the GPU.

Plain `generate()` at batch 1 is bound by the host: each token launches about a thousand small
kernels from Python (a few microseconds each) and copies the token back, so an H100 sits idle most
of the time (13-35 tok/s for a 7B model whose weights it can read 200 times a second). Here:

- a short prompt of one row (up to `PROMPT_WIDTHS[-1]` tokens: a chat turn) runs as one captured graph
  per width, right-padded (`_prompt_step`): with the model's own modules, causal attention over the
  prompt, and its keys and values written straight into the buffers — at 512 tokens the GPU needs
  ~15-25 ms, and launching its ~1,000 kernels from Python took as long again. Longer prompts and
  batches go through the model's own forward pass (Transformers' attention), with a cache that
  writes their keys and values into the buffers;
- every later token runs `_step()`: the same modules (embeddings, norms, projections, MLPs — so
  bitsandbytes' NF4 layers work unchanged), attention written out here over the fixed buffers, with
  the slot being written held in a device tensor, q/k/v and gate/up each one matmul. Nothing in it
  depends on host values, so on CUDA it is compiled (`torch.compile` fuses the ~70 small kernels per
  layer) and captured once as a CUDA graph: one launch per token;
- sampling (repetition penalty, temperature, top-k, top-p; each row its own settings) runs inside the
  same graph (`_sample`); JSON mode's grammar needs the host every step, so it, and top-k off, use
  the plain path's processors between replays (`Sampler`);
- the host reads token n while the GPU already computes token n+1, so the per-token host work
  (copy, detokenize, stop strings, streaming) overlaps the GPU instead of adding to it.

Rows of a batch are left-padded: row b's tokens sit in slots pad[b].. and its position ids count
from there, so one slot index serves all rows.

On a CPU the same code runs without graphs (the tests check it against the plain path); the page's
CPU path stays plain `generate()`. bitsandbytes' LLM.int8 layers read their outlier columns back to
the host inside every matmul, which a graph cannot hold; the step uses `lab.int8.Int8Linear` for them
instead (the same operators, the outlier columns found on the device) and is captured, not compiled.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessorList, RepetitionPenaltyLogitsProcessor
from transformers.cache_utils import DynamicLayer

from lab import int8
from lab.backend import SamplingParams
from lab.decode import TopKTopP

MIN_SLOTS = 1024  # cache lengths are powers of two from here, so requests share captured graphs
# One-row prompts up to these widths (right-padded to the next one) run as a captured graph: a chat
# turn's first token without Python launching every kernel. Past 512 tokens the prefill is bound by
# the GPU, and the graphs' memory (NF4 dequantizes a whole weight per product) would grow with width.
PROMPT_WIDTHS = (128, 256, 512)


def supported(model) -> str | None:
    """None when `model` can use the fast path; else the reason it cannot."""
    cfg = model.config
    if getattr(cfg, "model_type", "") not in ("qwen2", "llama", "mistral", "qwen3"):
        return f"the fast path knows Qwen2/Llama-style decoders, not {getattr(cfg, 'model_type', '?')}"
    if getattr(cfg, "use_sliding_window", False) and getattr(cfg, "sliding_window", None):
        return "sliding-window attention is not implemented in the fast path"
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") not in ("default", "yarn", "linear"):
        return f"{rope['rope_type']} RoPE scaling changes with length, which the fast path does not follow"
    return None


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_bytes_per_token(config) -> int:
    """Keys and values of one token over all layers, in 16 bits."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim(config) * 2


def is_int8(model) -> bool:
    return bool(getattr(model, "is_loaded_in_8bit", False))


def _int8_products(model) -> list:
    found = []
    for layer in model.model.layers:
        for owner, name in ((layer.self_attn, "_lab_qkv"), (layer.mlp, "_lab_gate_up")):
            fused = getattr(owner, name, None)
            if fused is not None and isinstance(fused[0], int8.Int8Linear):
                found.append(fused[0])
        for m in (layer.self_attn.o_proj, layer.mlp.down_proj):
            if getattr(m, "_lab_int8", None) is not None:
                found.append(m._lab_int8)
    return found


def int8_slots(model) -> int:
    """The fewest outlier slots of any LLM.int8 product in the decode step."""
    return min((p.slots for p in _int8_products(model)), default=0)


def widen_int8(model) -> int:
    """Double every product's outlier slots (up to its width); only with no captured graph alive."""
    for p in _int8_products(model):
        p.widen()
    return int8_slots(model)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(positions: torch.Tensor, rotary, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Transformers' rotary cos and sin ([..., head_dim], in `dtype`) for `positions` [...], from the model's
    `rotary_emb` (its frequencies and attention scaling: YaRN and linear scaling included)."""
    freqs = positions[..., None].float() * rotary.inv_freq.to(positions.device, torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    scale = float(getattr(rotary, "attention_scaling", 1.0))
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


def split_heads(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, n_kv: int, d: int):
    """Projections [b, w, heads*d] as [b, w, heads, d], with Qwen3's per-head q/k norms where the layer has them."""
    b, w = q.shape[:2]
    q, k, v = q.view(b, w, n_heads, d), k.view(b, w, n_kv, d), v.view(b, w, n_kv, d)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q, k, v


_LIVE: "weakref.WeakSet[StaticDecoder]" = weakref.WeakSet()  # decoders that captured graphs

TOP_K_MAX = 64  # top-k up to this samples inside the captured graph; larger (or off) samples eagerly


class StaticDecoder:
    """Key/value buffers for `batch` rows of up to `max_len` slots, the decode step over them, and a
    sampler that runs in the same captured graph (`sample_step`)."""

    def __init__(self, model, batch: int, max_len: int, eos_ids: Sequence[int] = (), pad_id: int = 0,
                 graphs: bool | None = None, fuse: bool = True, compile: bool | None = None,
                 prompt_widths: Sequence[int] | None = None) -> None:
        cfg = model.config
        self.fuse = fuse
        self.model = model
        self.pad_id = pad_id
        self.layers = model.model.layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = head_dim(cfg)
        self.batch, self.max_len = batch, max_len
        emb = model.model.embed_tokens.weight
        self.device, self.dtype = emb.device, emb.dtype
        self.rotary = model.model.rotary_emb
        shape = (batch, self.n_kv, max_len, self.head_dim)
        dev = self.device
        with torch.inference_mode():  # every use is under inference mode too (`decode` sees to it)
            self.k = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in self.layers]
            self.v = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in self.layers]
            self.ids = torch.zeros((batch, 1), dtype=torch.long, device=dev)
            self.cur = torch.zeros(1, dtype=torch.long, device=dev)  # the slot the next token goes to
            self.pad = torch.zeros(batch, dtype=torch.long, device=dev)  # each row's first real slot
            self.slots = torch.arange(max_len, device=dev)
            # the sampler's state: settings per row, tokens seen (repetition penalty), rows finished
            vocab = model.lm_head.weight.shape[0]
            self.logits_buf = torch.zeros((batch, vocab), dtype=torch.float32, device=dev)
            self.temperature = torch.ones(batch, device=dev)
            self.top_p = torch.ones(batch, device=dev)
            self.top_k = torch.full((batch,), TOP_K_MAX, device=dev)
            self.penalty = torch.ones(batch, device=dev)
            self.greedy = torch.ones(batch, dtype=torch.bool, device=dev)
            self.block_eos = torch.zeros(batch, dtype=torch.bool, device=dev)
            self.done = torch.zeros(batch, dtype=torch.bool, device=dev)
            self.seen = torch.zeros((batch, vocab), dtype=torch.bool, device=dev)
            self.next = torch.zeros(batch, dtype=torch.long, device=dev)
            self.eos = torch.tensor(list(eos_ids) or [-1], dtype=torch.long, device=dev)
            self.pad_token = torch.tensor(pad_id, dtype=torch.long, device=dev)
            self.ranks = torch.arange(TOP_K_MAX, device=dev)
        # One row's prompt, right-padded (`_prompt_step`), and the index of its last token.
        if prompt_widths is None:
            prompt_widths = PROMPT_WIDTHS if (batch == 1 and dev.type == "cuda" and not is_int8(model)
                                              and os.environ.get("LAB_PROMPT_GRAPHS", "1") != "0") else ()
        self.prompt_widths = tuple(sorted(w for w in prompt_widths if w <= max_len)) if batch == 1 else ()
        with torch.inference_mode():
            self.prompt = torch.full((1, max(self.prompt_widths, default=0)), pad_id, dtype=torch.long, device=dev)
            self.last = torch.zeros(1, dtype=torch.long, device=dev)
        self.prompt_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: torch.Tensor | None = None
        self.owner: FastPath | None = None
        if fuse:
            fuse_projections(model)
        on_gpu = dev.type == "cuda"
        # Compiling fuses the ~70 small kernels per layer (norms, rotary, residuals) that cost as much as
        # the weights' reads at batch 1; at large batches the matmuls dominate and it is not worth its time.
        # LLM.int8's products are bitsandbytes' own operators, which the compiler would only wrap.
        if compile is None:
            compile = on_gpu and batch <= 8 and not is_int8(model) and os.environ.get("LAB_COMPILE", "1") != "0"
        self.compiled = compile
        self.graph = self.graph_sampled = None
        self._forward, self._sampler = self._step, self._sample
        if compile:
            for t in self.k + self.v:  # one compiled step serves every cache length
                torch._dynamo.mark_dynamic(t, 2)
            torch._dynamo.mark_dynamic(self.slots, 0)
            self._forward, self._sampler = torch.compile(self._step), torch.compile(self._sample)
        if on_gpu if graphs is None else graphs:
            try:
                self._capture_all()
            except Exception as e:  # a compiler failure must not cost the user the fast path
                if not compile:
                    raise
                warnings.warn(f"compiling the decode step failed ({type(e).__name__}: {e}); using it uncompiled")
                self.compiled, self._forward, self._sampler = False, self._step, self._sample
                self._capture_all()

    @torch.inference_mode()
    def _capture_all(self) -> None:
        _LIVE.add(self)
        self.graph, self.logits = self._capture(self._forward)
        self.graph_sampled, _ = self._capture(self._sample_step, pool=self.graph.pool())
        self.outliers_clipped()  # the warm-up's inputs were not real: forget what they counted

    def outliers_clipped(self) -> bool:
        """LLM.int8: whether a step since the last call had more outlier columns than its slots (those
        beyond were left out of the product); the count starts again. Reads the GPU: call it between replies."""
        over = getattr(self.model, "_lab_int8_over", None)
        if over is None:
            return False
        clipped = bool(over)
        over.zero_()
        return clipped

    def release(self) -> None:
        """Let go of the graphs (they own a memory pool), the compiled functions and the buffers."""
        self.graph = self.graph_sampled = self.logits = None
        self.prompt_graphs = {}
        self._forward = self._sampler = None
        self.k, self.v = [], []
        self.model = self.layers = None

    # ---- the step ---------------------------------------------------------------------------
    def _step(self) -> torch.Tensor:
        """One token per row at slot `cur`; returns float32 logits [batch, vocab] and advances `cur`."""
        b, g = self.batch, self.n_heads // self.n_kv
        cos, sin = rope((self.cur - self.pad)[:, None, None], self.rotary, self.dtype)  # [b, 1, 1, d]
        # Row b sees its own slots from pad[b] up to the one being written.
        mask = ((self.slots <= self.cur) & (self.slots >= self.pad[:, None]))[:, None, None, :]
        h = self.model.model.embed_tokens(self.ids)
        norm = rms_norm if self.fuse else (lambda module, x: module(x))
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = norm(layer.input_layernorm, h)
            q, k, v = split_heads(attn, *project_qkv(attn, x), self.n_heads, self.n_kv, self.head_dim)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            self.k[i].index_copy_(2, self.cur, k)
            self.v[i].index_copy_(2, self.cur, v)
            # Grouped-query attention without copying keys: the g query heads that share a key head
            # become g query rows of that head (head h uses key head h // g, as Transformers' repeat_kv).
            o = F.scaled_dot_product_attention(q.reshape(b, self.n_kv, g, self.head_dim), self.k[i], self.v[i],
                                               attn_mask=mask, scale=attn.scaling)
            h = h + linear(attn.o_proj, o.reshape(b, 1, self.n_heads * self.head_dim))
            h = h + mlp(layer.mlp, norm(layer.post_attention_layernorm, h))
        h = norm(self.model.model.norm, h)
        self.cur.add_(1)
        return self.model.lm_head(h[:, -1]).float()

    def _prompt_step(self, width: int) -> None:
        """Row 0's prompt, right-padded to `width` in `prompt`: keys and values into slots 0..width-1 (those
        past the prompt are overwritten by the tokens that follow before anything reads them), and the
        logits of the token at `last` into `logits_buf`. Causal attention over the prompt alone, so the
        padding after it changes nothing before it."""
        g = self.n_heads // self.n_kv
        cos, sin = rope(self.slots[:width], self.rotary, self.dtype)  # [width, d]
        h = self.model.model.embed_tokens(self.prompt[:, :width])
        norm = rms_norm if self.fuse else (lambda module, x: module(x))
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = split_heads(attn, *project_qkv(attn, norm(layer.input_layernorm, h)), self.n_heads, self.n_kv,
                                  self.head_dim)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            self.k[i][:, :, :width].copy_(k)
            self.v[i][:, :, :width].copy_(v)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling, enable_gqa=g > 1)
            h = h + linear(attn.o_proj, o.transpose(1, 2).reshape(1, width, self.n_heads * self.head_dim))
            h = h + mlp(layer.mlp, norm(layer.post_attention_layernorm, h))
        h = norm(self.model.model.norm, h.index_select(1, self.last))
        self.logits_buf[:1].copy_(self.model.lm_head(h[:, 0]).float())

    def _sample(self) -> None:
        """The next token of every row from `logits_buf`, into `next` and `ids`: Transformers' order —
        repetition penalty, end-of-turn blocked before min_new_tokens, temperature, top-k, top-p — then a
        draw by the exponential race (argmax of p / Exp(1) noise picks i with probability p_i), which
        needs no host round trip, so it lives in the graph."""
        logits = self.logits_buf
        pen = self.penalty[:, None]
        logits = torch.where(self.seen, torch.where(logits < 0, logits * pen, logits / pen), logits)
        eos_cols = logits.index_select(1, self.eos)
        logits = logits.index_copy(1, self.eos, torch.where(self.block_eos[:, None], float("-inf"), eos_cols))
        values, index = logits.topk(TOP_K_MAX, dim=-1)  # sorted, largest first
        values = values / self.temperature.clamp(min=1e-6)[:, None]
        values = values.masked_fill(self.ranks >= self.top_k[:, None], float("-inf"))
        probs = values.softmax(dim=-1)
        values = values.masked_fill(probs.cumsum(dim=-1) - probs >= self.top_p[:, None], float("-inf"))
        probs = values.softmax(dim=-1)
        pick = (probs / torch.empty_like(probs).exponential_()).argmax(dim=-1, keepdim=True)
        nxt = torch.where(self.greedy, index[:, 0], index.gather(1, pick).squeeze(1))
        nxt = torch.where(self.done, self.pad_token, nxt)  # finished rows only pad
        self.done.logical_or_(torch.isin(nxt, self.eos))
        self.seen.scatter_(1, nxt[:, None], True)
        self.next.copy_(nxt)
        self.ids.copy_(nxt[:, None])

    def _sample_step(self) -> torch.Tensor:
        self._sampler()
        logits = self._forward()
        self.logits_buf.copy_(logits)
        return logits

    def _capture(self, fn, pool=None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm-up on a side stream (cuBLAS, bitsandbytes and the compiler set themselves up), then
        # capture. What the warm-up writes is overwritten by the next prefill.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):
                self.cur.zero_()
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        self.cur.zero_()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=pool):
            out = fn()
        return graph, out

    def step(self) -> torch.Tensor:
        """Run the step for the tokens in `self.ids`; the logits buffer is reused by the next call."""
        if self.graph is not None:
            self.graph.replay()
            return self.logits
        return self._forward()

    def sample_step(self) -> None:
        """Sample each row's next token from `logits_buf` (into `next`), run the step for it, and leave
        its logits in `logits_buf`."""
        if self.graph_sampled is not None:
            self.graph_sampled.replay()
        else:
            self._sample_step()

    @torch.inference_mode()
    def set_sampling(self, params: SamplingParams | Sequence[SamplingParams], rows: Sequence[Sequence[int]]) -> None:
        """Settings for every row — one for all, or one per row — (unused rows: greedy, already finished)
        and each row's prompt tokens as seen."""
        n, spare = len(rows), self.batch - len(rows)
        ps = list(params) if isinstance(params, (list, tuple)) else [params] * n

        def put(buf: torch.Tensor, values: list, fill) -> None:
            buf.copy_(torch.tensor(values + [fill] * spare, dtype=buf.dtype))

        put(self.temperature, [p.temperature or 1.0 for p in ps], 1.0)
        put(self.top_p, [p.top_p for p in ps], 1.0)
        put(self.top_k, [p.top_k or TOP_K_MAX for p in ps], TOP_K_MAX)
        put(self.penalty, [p.repetition_penalty for p in ps], 1.0)
        put(self.greedy, [p.greedy for p in ps], True)
        put(self.block_eos, [p.ignore_eos for p in ps], False)
        put(self.done, [False] * n, True)
        self.seen.zero_()
        for i, (r, p) in enumerate(zip(rows, ps)):
            if p.repetition_penalty != 1.0:
                self.seen[i, torch.tensor(r, device=self.device)] = True

    # ---- the prompt -------------------------------------------------------------------------
    def prefill(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Put the prompts into the buffers; float32 logits of each row's last prompt token. One short
        row goes through `_prompt_step` (captured on CUDA); the rest, left-padded, through the model's
        own forward."""
        assert 0 < len(rows) <= self.batch, (len(rows), self.batch)
        width = max(map(len, rows))
        assert width < self.max_len, (width, self.max_len)
        fits = [w for w in self.prompt_widths if w >= width]
        if len(rows) == 1 and fits:
            return self._prefill_one(rows[0], fits[0])
        ids = torch.zeros((self.batch, width), dtype=torch.long)
        mask = torch.zeros((self.batch, width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        mask[len(rows):, -1] = 1  # unused rows: one dummy token, so no row is all padding
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        cache.layers = [_IntoBuffers(k, v) for k, v in zip(self.k, self.v)]
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        self.pad.copy_(width - mask.sum(-1))
        self.cur.fill_(width)
        self.logits_buf.copy_(out.logits[:, -1])
        return self.logits_buf[:len(rows)]

    def prepare_prompts(self, widths: Sequence[int] | None = None) -> None:
        """Capture the prompt step for these widths (all by default) unless done. Each width is captured on
        its first use, so a decoder that only ever sees long prompts holds no memory for them; the model's
        warm-up prepares the chat decoder's in advance. Without graphs (a CPU) `_prompt_step` runs as it is."""
        if self.graph is None:
            return
        for w in self.prompt_widths if widths is None else widths:
            if w not in self.prompt_graphs:  # one pool with the step's: the graphs never run at the same time
                self.prompt_graphs[w], _ = self._capture(lambda: self._prompt_step(w), pool=self.graph.pool())

    def _prefill_one(self, row: Sequence[int], width: int) -> torch.Tensor:
        padded = list(row) + [self.pad_id] * (width - len(row))
        self.prompt[:, :width].copy_(torch.tensor([padded]))
        self.last.fill_(len(row) - 1)
        self.pad.zero_()
        if self.graph is None:
            self._prompt_step(width)
        else:
            self.prepare_prompts([width])
            self.prompt_graphs[width].replay()
        self.cur.fill_(len(row))
        return self.logits_buf[:1]


class _IntoBuffers(DynamicLayer):
    """One layer's cache for the prompt's forward pass from an empty cache: keys and values go straight
    into the decoder's buffers. A cache of its own, copied afterwards, held the whole prompt's keys and
    values twice at the forward's peak (0.2 GiB at 4K tokens for a 7B model, 1.8 GiB at 32K)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        super().__init__()
        self.k_buf, self.v_buf = k, v

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[-2]
        self.k_buf[:, :, :n].copy_(key_states)
        self.v_buf[:, :, :n].copy_(value_states)
        self.keys, self.values = self.k_buf[:, :, :n], self.v_buf[:, :, :n]
        self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
        return self.keys, self.values


def rms_norm(module, x: torch.Tensor) -> torch.Tensor:
    """Transformers' RMSNorm (float32 statistics, cast back, then the weight) in three kernels, not eight."""
    y = F.rms_norm(x.float(), (x.shape[-1],), eps=module.variance_epsilon)
    return module.weight * y.to(x.dtype)


def _plain_linear(m) -> bool:
    return type(m) is torch.nn.Linear


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
    LLM.int8 layers one `lab.int8.Int8Linear` (and o/down get one each, so the whole step can be
    captured); NF4 layers stay as they are."""
    counters = None  # LLM.int8: (most outlier columns seen, a product had more than its slots) on the device
    if is_int8(model):
        if getattr(model, "_lab_int8_seen", None) is None:
            dev = model.lm_head.weight.device
            model._lab_int8_seen = torch.zeros((), dtype=torch.long, device=dev)
            model._lab_int8_over = torch.zeros((), dtype=torch.bool, device=dev)
        counters = model._lab_int8_seen, model._lab_int8_over
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if getattr(attn, "_lab_qkv", None) is None:
            attn._lab_qkv = _fused([attn.q_proj, attn.k_proj, attn.v_proj], counters)
        if getattr(mlp, "_lab_gate_up", None) is None:
            mlp._lab_gate_up = _fused([mlp.gate_proj, mlp.up_proj], counters)
        if counters is not None:
            for m in (attn.o_proj, mlp.down_proj):
                if getattr(m, "_lab_int8", None) is None and int8.is_int8_linear(m):
                    m._lab_int8 = int8.Int8Linear.of([m], counters[0], over=counters[1])


def _fused(mods: list, counters: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[Callable, list[int]] | None:
    sizes = [m.out_features for m in mods]
    if counters is not None and all(int8.is_int8_linear(m) for m in mods):
        return int8.Int8Linear.of(mods, counters[0], over=counters[1]), sizes
    if not all(_plain_linear(m) for m in mods):
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
    own = getattr(module, "_lab_int8", None)
    return module(x) if own is None else own(x)


def project_qkv(attn, x: torch.Tensor):
    fused = getattr(attn, "_lab_qkv", None)
    if fused is None:
        return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    fn, sizes = fused
    return fn(x).split(sizes, dim=-1)


def mlp(module, x: torch.Tensor) -> torch.Tensor:
    fused = getattr(module, "_lab_gate_up", None)
    if fused is None:
        return module(x)
    fn, sizes = fused
    gate, up = fn(x).split(sizes, dim=-1)
    return linear(module.down_proj, module.act_fn(gate) * up)


class Sampler:
    """Chooses each row's next token the way `generate()` would with the same settings: repetition
    penalty, end-of-turn masked until min_new_tokens, custom processors (JSON grammar first), then
    temperature/top-k/top-p, then a draw (or the argmax when greedy)."""

    @staticmethod
    def graphable(params: SamplingParams) -> bool:
        """Whether the decoder's in-graph sampler can do what `params` ask (no grammar, top-k on and small)."""
        return not params.response_format and (params.greedy or 1 <= params.top_k <= TOP_K_MAX)

    def __init__(self, params: SamplingParams, eos_ids: Sequence[int], constraint=None) -> None:
        self.greedy = params.greedy
        procs: list[Callable] = []
        if params.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        if constraint is not None:
            procs.append(constraint)
        if not params.greedy:
            procs.append(TopKTopP(params.top_k, params.top_p, params.temperature) if params.top_k
                         else _TemperatureTopP(params.temperature, params.top_p))
        self.procs = LogitsProcessorList(procs)
        self.eos = torch.tensor(list(eos_ids), dtype=torch.long)
        self.min_new = params.max_new_tokens if params.ignore_eos else 0
        self.params = params
        # Without a grammar and with top-k on (Qwen's default is 20), the decoder's own sampler does the
        # same inside its captured graph.
        self.in_graph = constraint is None and self.graphable(params)


    def __call__(self, history: torch.Tensor, logits: torch.Tensor, step: int) -> torch.Tensor:
        if step < self.min_new and len(self.eos):
            logits = logits.clone()
            logits[:, self.eos.to(logits.device)] = float("-inf")
        logits = self.procs(history, logits)
        if self.greedy:
            return logits.argmax(dim=-1)
        return torch.multinomial(logits.softmax(dim=-1), 1).squeeze(1)


class _TemperatureTopP:
    def __init__(self, temperature: float, top_p: float) -> None:
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores / self.temperature
        if self.top_p >= 1.0:
            return scores
        order = scores.argsort(dim=-1, descending=True)
        probs = scores.gather(-1, order).softmax(dim=-1)
        drop = (probs.cumsum(dim=-1) - probs) >= self.top_p
        return scores.scatter(-1, order, scores.gather(-1, order).masked_fill(drop, float("-inf")))


class RowsSampler:
    """Each row its own settings (Compare's panes), sampled inside the decoder's graph."""

    def __init__(self, params: Sequence[SamplingParams]) -> None:
        assert all(Sampler.graphable(p) for p in params), "rows with grammars or top-k off use generate()"
        self.params = list(params)
        self.in_graph = True


@dataclass
class Decoded:
    tokens: list[list[int]]  # each row's new tokens, up to and including its end-of-turn token
    finished: list[bool]  # the row ended on an end-of-turn token
    clipped: bool = False  # LLM.int8: a step had more outlier columns than its slots (see FastPath.decoder)


@torch.inference_mode()
def decode(dec: StaticDecoder, rows: Sequence[Sequence[int]], sampler: Sampler, max_new: int, eos_ids: Sequence[int],
           pad_id: int, cancel: threading.Event | None = None,
           on_tokens: Callable[[list[int]], bool] | None = None) -> Decoded:
    """Prefill `rows`, then decode up to `max_new` tokens each. `on_tokens` gets every step's tokens
    (one per row) as soon as they reach the host and may return True to stop early (a stop string).

    The host reads token t while the GPU already computes token t+1, so what it does per token
    (detokenizing, streaming) overlaps the GPU's work."""
    n, width = len(rows), max(map(len, rows))
    assert width + max_new <= dec.max_len, (width, max_new, dec.max_len)
    tokens: list[list[int]] = [[] for _ in range(n)]
    finished = [False] * n
    cuda = dec.device.type == "cuda"
    host = [torch.empty(n, dtype=torch.long, pin_memory=cuda) for _ in range(2)]
    events: list = [None, None]  # CUDA: when each host buffer's copy has landed

    def deliver(step: int) -> bool:
        """Hand over the tokens of `step`; True when decoding should end."""
        if cuda:
            events[step % 2].synchronize()
        got = host[step % 2].tolist()
        for i, t in enumerate(got):
            if not finished[i]:
                tokens[i].append(t)
                finished[i] = t in eos_ids
        stop = bool(on_tokens(got)) if on_tokens is not None else False
        return all(finished) or stop or (cancel is not None and cancel.is_set())

    def ship(step: int, ids: torch.Tensor) -> None:
        host[step % 2].copy_(ids[:n], non_blocking=cuda)
        if cuda:
            events[step % 2] = torch.cuda.Event()
            events[step % 2].record()

    def result() -> Decoded:
        clipped = dec.outliers_clipped()
        if clipped and dec.owner is not None:
            dec.owner.clipped = True
        return Decoded(tokens, finished, clipped)

    dec.prefill(rows)
    if sampler.in_graph:
        dec.set_sampling(sampler.params, rows)
        dec._sampler()  # the first token alone, so it reaches the host without waiting for a decode step
        ship(0, dec.next)
        if max_new > 1:
            dec.logits_buf.copy_(dec.step())  # its forward pass, queued before the host waits for it
        if deliver(0):
            return result()
        for step in range(1, max_new):
            dec.sample_step()  # token `step`, and the forward pass that scores what comes after it
            ship(step, dec.next)
            if step > 1 and deliver(step - 1):
                return result()
        if max_new > 1:
            deliver(max_new - 1)
        return result()

    history = torch.full((n, width + max_new), pad_id, dtype=torch.long, device=dec.device)
    for i, r in enumerate(rows):
        history[i, width - len(r):width] = torch.tensor(r)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=dec.device)
    done = torch.zeros(n, dtype=torch.bool, device=dec.device)
    logits = dec.logits_buf[:n]
    for step in range(max_new):
        nxt = sampler(history[:, :width + step], logits, step)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)  # finished rows only pad
        done = done | torch.isin(nxt, eos)
        history[:, width + step] = nxt
        dec.ids[:n, 0] = nxt
        ship(step, nxt)
        if step + 1 < max_new:
            logits = dec.step()[:n]
        if step and deliver(step - 1):
            return result()
    deliver(max_new - 1)
    return result()


class FastPath:
    """The decoders of one model, one per (batch, length) shape, kept while they fit."""

    def __init__(self, model, eos_ids: Sequence[int], pad_id: int, keep: int = 2) -> None:
        self.model = model
        self.eos_ids, self.pad_id = list(eos_ids), pad_id
        self.keep = keep
        self._decoders: dict[tuple[int, int], StaticDecoder] = {}
        self.clipped = False  # set by `decode()` (LLM.int8 outliers past the slots); the next `decoder()` widens

    def decoder(self, batch: int, length: int) -> StaticDecoder:
        length = max(MIN_SLOTS, 1 << (length - 1).bit_length())  # few shapes: few captures (and compiles)
        if self.clipped:  # LLM.int8: the last reply needed more outlier slots; every graph is built anew
            self.clipped = False
            self.clear()
            wider = widen_int8(self.model)
            warnings.warn(f"a reply had more LLM.int8 outlier columns than the decoder's slots; now {wider}")
        key = (batch, length)
        if key not in self._decoders:
            while len(self._decoders) >= self.keep:  # drop the oldest shape's buffers and graph
                self._decoders.pop(next(iter(self._decoders))).release()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._decoders[key] = StaticDecoder(self.model, batch, length, self.eos_ids, self.pad_id)
            self._decoders[key].owner = self
        else:
            self._decoders[key] = self._decoders.pop(key)  # most recently used last
        return self._decoders[key]

    def clear(self) -> None:
        """Drop every decoder: its buffers, graphs and compiled step (switching models must free them)."""
        compiled = any(d.compiled for d in self._decoders.values())
        for d in self._decoders.values():
            d.release()
        self._decoders.clear()
        if compiled:  # compiled code is cached globally and keeps references to what it was compiled with
            torch._dynamo.reset()
        # cuBLAS keeps a 32 MiB workspace per (handle, stream) in PyTorch's allocator, and captured graphs
        # use the ones that existed when they were captured: free them only once no graph is left.
        if torch.cuda.is_available() and not any(d.graph is not None for d in list(_LIVE)):
            clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
            if clear is not None:
                clear()
