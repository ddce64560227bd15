"""The static decoder: key/value buffers for `batch` rows of up to `max_len` slots, the decode step over them
(compiled and captured as one CUDA graph on the GPU), the captured prompt step for a short one-row prompt,
and the sampler's per-row state, sampled inside the same graph.

Rows of a batch are left-padded: row b's tokens sit in slots pad[b].. and its position ids count from
there, so one slot index (`cur`, a device tensor) serves all rows and nothing in the step depends on a
host value. bitsandbytes' LLM.int8 layers read their outlier columns back to the host inside every
matmul, which a graph cannot hold; the step uses `kernels.int8.Int8Linear` for them instead (the same
operators, the outlier columns found on the device) and is captured, not compiled.
"""

from __future__ import annotations

import os
import warnings
import weakref
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from lab.engine import sampling
from lab.engine.kernels import attention
from lab.engine.layers import Heads, fuse_projections, is_int8, layers_forward, module_norm, rms_norm, rope
from lab.interface import SamplingParams

# One-row prompts up to these widths (right-padded to the next one) run as a captured graph: a chat
# turn's first token without Python launching every kernel. Past 512 tokens the prefill is bound by
# the GPU, and the graphs' memory (NF4 dequantizes a whole weight per product) would grow with width.
PROMPT_WIDTHS = (128, 256, 512)

LIVE: "weakref.WeakSet[StaticDecoder]" = weakref.WeakSet()  # decoders that captured graphs


class StaticDecoder:
    def __init__(self, model, batch: int, max_len: int, eos_ids: Sequence[int] = (), pad_id: int = 0,
                 graphs: bool | None = None, fuse: bool = True, compile: bool | None = None,
                 prompt_widths: Sequence[int] | None = None, compile_rows: int = 8) -> None:
        self.model, self.pad_id = model, pad_id
        self.heads = Heads.of(model.config)
        self.norm = rms_norm if fuse else module_norm
        self.batch, self.max_len = batch, max_len
        emb = model.model.embed_tokens.weight
        self.device, self.dtype = emb.device, emb.dtype
        self.rotary = model.model.rotary_emb
        dev = self.device
        shape = (batch, self.heads.n_kv, max_len, self.heads.dim)
        with torch.inference_mode():  # every use is under inference mode too (the loop sees to it)
            self.k = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in model.model.layers]
            self.v = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in model.model.layers]
            self.ids = torch.zeros((batch, 1), dtype=torch.long, device=dev)
            self.cur = torch.zeros(1, dtype=torch.long, device=dev)  # the slot the next token goes to
            self.pad = torch.zeros(batch, dtype=torch.long, device=dev)  # each row's first real slot
            self.slots = torch.arange(max_len, device=dev)
            # the sampler's state: settings per row, tokens seen (repetition penalty), rows finished
            vocab = model.lm_head.weight.shape[0]
            self.logits_buf = torch.zeros((batch, vocab), dtype=torch.float32, device=dev)
            self.temperature = torch.ones(batch, device=dev)
            self.top_p = torch.ones(batch, device=dev)
            self.top_k = torch.full((batch,), sampling.TOP_K_MAX, device=dev)
            self.penalty = torch.ones(batch, device=dev)
            self.greedy = torch.ones(batch, dtype=torch.bool, device=dev)
            self.block_eos = torch.zeros(batch, dtype=torch.bool, device=dev)
            self.done = torch.zeros(batch, dtype=torch.bool, device=dev)
            self.seen = torch.zeros((batch, vocab), dtype=torch.bool, device=dev)
            self.next = torch.zeros(batch, dtype=torch.long, device=dev)
            self.seeds = torch.zeros(batch, dtype=torch.long, device=dev)  # each row's own draws (sampling)
            self.eos = torch.tensor(list(eos_ids) or [-1], dtype=torch.long, device=dev)
            self.pad_token = torch.tensor(pad_id, dtype=torch.long, device=dev)
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
        self.at = 0  # `cur` as the host knows it without reading the GPU: every step and prefill moves both
        if fuse:
            fuse_projections(model)
        on_gpu = dev.type == "cuda"
        # Compiling fuses the ~70 small kernels per layer (norms, rotary, residuals) that cost as much as
        # the weights' reads at batch 1; at large batches the matmuls dominate and it is not worth its time.
        # LLM.int8's products are bitsandbytes' own operators, which the compiler would only wrap.
        if compile is None:
            compile = (on_gpu and batch <= compile_rows and not is_int8(model)
                       and os.environ.get("LAB_COMPILE", "1") != "0")
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
        LIVE.add(self)
        self.graph, self.logits = self._capture(self._forward)
        self.graph_sampled, _ = self._capture(self._sample_step, pool=self.graph.pool())
        self.outliers_clipped()  # the warm-up's inputs were not real: forget what they counted

    def outliers_clipped(self) -> bool:
        """LLM.int8: whether a step since the last call had more outlier columns than its slots (those
        beyond were left out of the product); the count starts again. Reads the GPU: call it between replies."""
        over = getattr(self.model, "lab_int8_over", None)
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
        self.model = None

    # ---- the steps ------------------------------------------------------------------------------
    def _step(self) -> torch.Tensor:
        """One token per row at slot `cur`; returns float32 logits [batch, vocab] and advances `cur`."""
        b, heads = self.batch, self.heads
        cos, sin = rope((self.cur - self.pad)[:, None, None], self.rotary, self.dtype)  # [b, 1, 1, d]
        # Row b sees its own slots from pad[b] up to the one being written.
        mask = ((self.slots <= self.cur) & (self.slots >= self.pad[:, None]))[:, None, None, :]
        layers = self.model.model.layers
        lab_attention = attention.selected() == "lab"

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.k[i].index_copy_(2, self.cur, k.transpose(1, 2))
            self.v[i].index_copy_(2, self.cur, v.transpose(1, 2))
            # Grouped-query attention without copying keys: the g query heads that share a key head
            # become g query rows of that head (head h uses key head h // g, as Transformers' repeat_kv).
            qg = q.transpose(1, 2).reshape(b, heads.n_kv, heads.group, heads.dim)
            if lab_attention and attention.supports(qg, self.k[i]) is None:  # split over the slots up to cur
                o = attention.decode_attention(qg, self.k[i], self.v[i], self.cur, self.pad,
                                               layers[i].self_attn.scaling)
            else:
                o = F.scaled_dot_product_attention(qg, self.k[i], self.v[i], attn_mask=mask,
                                                   scale=layers[i].self_attn.scaling)
            return o.reshape(b, 1, heads.n_heads * heads.dim)

        h = layers_forward(self.model, self.model.model.embed_tokens(self.ids), cos, sin, attend, heads, self.norm)
        h = self.norm(self.model.model.norm, h)
        self.cur.add_(1)
        return self.model.lm_head(h[:, -1]).float()

    def _prompt_step(self, width: int) -> None:
        """Row 0's prompt, right-padded to `width` in `prompt`: keys and values into slots 0..width-1 (those
        past the prompt are overwritten by the tokens that follow before anything reads them), and the
        logits of the token at `last` into `logits_buf`. Causal attention over the prompt alone, so the
        padding after it changes nothing before it."""
        heads = self.heads
        cos, sin = rope(self.slots[:width][:, None], self.rotary, self.dtype)  # [width, 1, d]
        layers = self.model.model.layers

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            self.k[i][:, :, :width].copy_(k)
            self.v[i][:, :, :width].copy_(v)
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, is_causal=True,
                                               scale=layers[i].self_attn.scaling, enable_gqa=heads.group > 1)
            return o.transpose(1, 2).reshape(1, width, heads.n_heads * heads.dim)

        h = layers_forward(self.model, self.model.model.embed_tokens(self.prompt[:, :width]), cos, sin, attend,
                           heads, self.norm)
        h = self.norm(self.model.model.norm, h.index_select(1, self.last))
        self.logits_buf[:1].copy_(self.model.lm_head(h[:, 0]).float())

    def _sample(self) -> None:
        sampling.sample_in_graph(self)

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
        self.at += 1
        if self.graph is not None:
            self.graph.replay()
            return self.logits
        return self._forward()

    def sample_step(self) -> None:
        """Sample each row's next token from `logits_buf` (into `next`), run the step for it, and leave
        its logits in `logits_buf`."""
        self.at += 1
        if self.graph_sampled is not None:
            self.graph_sampled.replay()
        else:
            self._sample_step()

    def sample(self) -> None:
        """Sample each row's next token from `logits_buf` into `next` (no step after it)."""
        self._sampler()

    @torch.inference_mode()
    def set_sampling(self, params: SamplingParams | Sequence[SamplingParams], rows: Sequence[Sequence[int]],
                     seeds: Sequence[int] | None = None) -> None:
        """Settings for every row — one for all, or one per row — (unused rows: greedy, already finished),
        each row's prompt tokens as seen, and each row's seed (default: drawn from torch's generator, which the
        caller seeded, so rows differ and a run repeats)."""
        n, spare = len(rows), self.batch - len(rows)
        ps = list(params) if isinstance(params, (list, tuple)) else [params] * n

        def put(buf: torch.Tensor, values: list, fill) -> None:
            buf.copy_(torch.tensor(values + [fill] * spare, dtype=buf.dtype))

        put(self.temperature, [p.temperature or 1.0 for p in ps], 1.0)
        put(self.top_p, [p.top_p for p in ps], 1.0)
        put(self.top_k, [p.top_k or sampling.TOP_K_MAX for p in ps], sampling.TOP_K_MAX)
        put(self.penalty, [p.repetition_penalty for p in ps], 1.0)
        put(self.greedy, [p.greedy for p in ps], True)
        put(self.block_eos, [p.ignore_eos for p in ps], False)
        put(self.done, [False] * n, True)
        drawn = torch.randint(0, 2**31, (self.batch,)).tolist()
        put(self.seeds, list(seeds) if seeds is not None else drawn[:n], 0)
        self.seen.copy_(sampling.seen_mask(rows, ps, self.seen.shape[1], self.batch, self.device))

    # ---- the prompt -----------------------------------------------------------------------------
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
        self.at = width
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
        self.at = len(row)
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
