"""The Transformers backend: load (bitsandbytes 4/8-bit, bf16, fp16, fp32; CUDA or CPU), stream a
chat reply, generate for a batch of prompts, and score answer options.

Use `lab.models.load_model()` to get one; this module does the work once a checkpoint is local.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Iterator, Sequence

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, LogitsProcessorList,
                          StoppingCriteriaList)

from lab import fast, runtime
from lab.backend import Chunk, Completion, Message, ModelInfo, ReplyStats, SamplingParams
from lab.decode import (CancelOnEvent, IncrementalDecoder, StopMatcher, TokenQueue, TopKTopP, cut_at_stop,
                        finish_reason)
from lab.errors import LabError
from lab.prefix import PrefixScorer, common_length, plan_batches, prefix_groups, reads_one_copy

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "4bit": torch.bfloat16, "8bit": torch.float16}  # LLM.int8 computes in fp16; bf16 inputs get cast per call


def bnb_config(quant: str, double_quant: bool = True) -> BitsAndBytesConfig:
    if quant == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=double_quant,  # quantizes the scales too: ~0.4 bits/param less
        )
    return BitsAndBytesConfig(load_in_8bit=True)  # LLM.int8 with the default outlier threshold 6.0


def quant_detail(quant: str, double_quant: bool) -> str:
    return {
        "4bit": "bitsandbytes NF4, bf16 compute" + (", double quant" if double_quant else ""),
        "8bit": "bitsandbytes LLM.int8, fp16 compute",
    }.get(quant, "")


def extend_context(config, name: str, native: int, context: int) -> str:
    """Stretch RoPE with YaRN so the model reaches `context` tokens (Qwen2.5's own recipe for 128K);
    returns the note for the page."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise LabError(f"{name} already scales its positions ({rope['rope_type']}), so --context cannot go past "
                       f"its {native:,} tokens.")
    factor = context / native
    config.rope_parameters = {**rope, "rope_type": "yarn", "factor": factor, "original_max_position_embeddings": native}
    return (f"context extended from {native:,} to {context:,} tokens with YaRN (factor {factor:g}); static YaRN "
            "can cost some quality on short texts")


def load_hf(path: str, *, spec, source: str, quant: str, device: str, double_quant: bool = True,
            context: int | None = None, notes: Sequence[str] = ()) -> "HFModel":
    notes = list(notes)
    kwargs: dict = {"dtype": DTYPES[quant]}
    if quant in ("4bit", "8bit"):
        kwargs["quantization_config"] = bnb_config(quant, double_quant)
    if device == "cuda":
        kwargs["device_map"] = {"": 0}
    before = torch.cuda.memory_allocated() if device == "cuda" else 0
    try:
        config = AutoConfig.from_pretrained(path)
        native = spec.context_length or getattr(config, "max_position_embeddings", None) or 4096
        if context is not None and context > native:
            notes.append(extend_context(config, spec.name, native, context))
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
    except torch.OutOfMemoryError:
        runtime.release_gpu_memory()
        raise LabError(
            f"{spec.name} in {quant} does not fit in GPU memory; choose --quant 4bit or a smaller model."
        ) from None
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LabError(f"Could not load {spec.name} from {path} ({first.rstrip('.')}).") from None
    model.eval()
    weight_bytes = (torch.cuda.memory_allocated() - before) if device == "cuda" else model.get_memory_footprint()
    info = ModelInfo(
        name=spec.name, source=source, quant=quant, device="cuda:0" if device == "cuda" else "cpu",
        context_length=int(context or native), weight_bytes=int(weight_bytes),
        quant_detail=quant_detail(quant, double_quant), notes=notes,
    )
    hf = HFModel(model, tokenizer, info)
    if hf.fast is not None:
        print("Preparing the fast decode path (compiling the decode step; a minute the first time)…",
              file=sys.stderr, flush=True)
        hf.warm_up()
    return hf


class HFModel:
    """One loaded Transformers model behind the interface of `lab.backend.ChatModel`."""

    def __init__(self, model, tokenizer, info: ModelInfo) -> None:
        self.model = model
        self.tok = tokenizer
        self.info = info
        self.device = next(model.parameters()).device
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_ids: list[int] = [eos] if isinstance(eos, int) else list(eos or [])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_ids or [0])[0]
        self._lock = threading.Lock()  # one generate/forward at a time on this model
        self._grammars = None  # lab.structured.Grammars, built on the first JSON-mode request
        self._fast: fast.FastPath | None = None
        self._prefix: PrefixScorer | None = None  # shared-prefix scoring, with the last prefix kept
        reason = fast.supported(model)
        if self.device.type != "cuda":
            reason = "the fast path is for CUDA; on a CPU plain generate() is not host-bound"
        elif os.environ.get("LAB_FAST", "1") == "0":
            reason = "switched off by LAB_FAST=0"
        self.fast_off_reason: str | None = reason  # None: decoding uses lab.fast
        # Replies stream from one long-lived thread: CUDA libraries keep their handles and plans per
        # thread, and a fresh thread per reply paid ~50 ms of set-up before its first token.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-generate")

    def warm_up(self) -> None:
        """Build (compile and capture) the batch-1 decode step and its prompt steps now rather than in the
        first reply."""
        if self.fast is not None:
            with self._lock, torch.inference_mode():
                self.fast.decoder(1, fast.MIN_SLOTS).prepare_prompts()

    @property
    def fast(self) -> "fast.FastPath | None":
        """Static cache + CUDA graphs (lab.fast) when this model can use them, else None."""
        if self.fast_off_reason is not None:
            return None
        if self._fast is None:
            self._fast = fast.FastPath(self.model, self.eos_ids, self.pad_id)
        return self._fast

    # ---- prompts and tokens -------------------------------------------------------------
    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True,
               tools: Sequence[dict] | None = None) -> str:
        if not getattr(self.tok, "chat_template", None):
            raise LabError(f"{self.info.name} has no chat template, so it cannot chat; use an Instruct model.")
        return self.tok.apply_chat_template(list(messages), tools=list(tools) if tools else None, tokenize=False,
                                            add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        # The chat template already wrote every special token; adding BOS/EOS here would double them.
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def count_chat_tokens(self, messages: Sequence[Message], tools: Sequence[dict] | None = None) -> int:
        return self.count_tokens(self.render(messages, tools=tools))

    def _constraint(self, params: SamplingParams, rows: int):
        """The decoding constraint for JSON mode (None when off); grammars compile once per model."""
        if not params.response_format:
            return None
        if self._grammars is None:
            from lab.structured import Grammars

            self._grammars = Grammars(self.tok, self.model.config.vocab_size, self.eos_ids)
        return self._grammars.constraint(params.response_format, rows, params.max_new_tokens)

    def _generation_kwargs(self, params: SamplingParams, constraint=None) -> dict:
        kw = dict(
            max_new_tokens=params.max_new_tokens,
            repetition_penalty=params.repetition_penalty,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        # Custom processors run after the repetition penalty and before Transformers' own warpers;
        # the grammar goes first, so top-k and top-p choose among allowed tokens only.
        processors = [constraint] if constraint is not None else []
        if params.greedy:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        elif params.top_k:
            # One warper sorts only the top-k survivors; 0 and 1.0 switch off Transformers' own two.
            # The temperature goes into it too: Transformers' own temperature warper would run after it.
            processors.append(TopKTopP(params.top_k, params.top_p, params.temperature))
            kw.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
        else:
            kw.update(do_sample=True, temperature=params.temperature, top_k=0, top_p=params.top_p)
        if processors:
            kw["logits_processor"] = LogitsProcessorList(processors)
        if params.ignore_eos:
            kw["min_new_tokens"] = params.max_new_tokens  # masks end-of-turn tokens until the end
        return kw

    @staticmethod
    def _seed(params: SamplingParams) -> int:
        return params.seed if params.seed is not None else random.randrange(2**31)

    # ---- streaming chat -----------------------------------------------------------------
    def stream_chat(self, messages: Sequence[Message], params: SamplingParams,
                    cancel: threading.Event | None = None, tools: Sequence[dict] | None = None) -> Iterator[Chunk]:
        t0 = time.perf_counter()
        cancel = cancel or threading.Event()
        ids = self.encode(self.render(messages, tools=tools))
        if len(ids) + params.max_new_tokens > self.info.context_length:
            raise LabError(
                f"The prompt ({len(ids):,} tokens) plus max new tokens ({params.max_new_tokens:,}) exceeds "
                f"{self.info.name}'s context of {self.info.context_length:,} tokens; shorten the conversation."
            )
        seed = self._seed(params)
        streamer = TokenQueue()
        failure: list[BaseException] = []
        input_ids = torch.tensor([ids], device=self.device)
        constraint = self._constraint(params, rows=1)  # an unenforceable schema fails here, before any decoding

        def work() -> None:
            try:
                with self._lock, torch.inference_mode():
                    if self.device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    torch.manual_seed(seed)
                    if self.fast is not None:
                        streamer.put(input_ids)  # the prompt first, as generate() hands it over
                        dec = self.fast.decoder(1, len(ids) + params.max_new_tokens)
                        fast.decode(dec, [ids], fast.Sampler(params, self.eos_ids, constraint),
                                    params.max_new_tokens, self.eos_ids, self.pad_id, cancel,
                                    on_tokens=lambda got: streamer.put(torch.tensor(got)))
                    else:
                        self.model.generate(
                            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                            stopping_criteria=StoppingCriteriaList([CancelOnEvent(cancel)]),
                            **self._generation_kwargs(params, constraint),
                        )
            except BaseException as e:  # handed to the consumer, which raises it in its own thread
                failure.append(e)
            finally:
                streamer.end()

        worker = self._worker.submit(work)
        detok, stops = IncrementalDecoder(self.tok), StopMatcher(params.stop)
        finished = False
        try:
            for token_id in streamer:
                text = stops.feed(detok.push(token_id))
                if text:
                    yield Chunk(text)
                if stops.hit:
                    cancel.set()
            tail = stops.feed(detok.flush()) + stops.flush()
            if tail:
                yield Chunk(tail)
            worker.result()
            if failure:
                raise _user_error(failure[0], self.info.name) from failure[0]
            finished = True
            stats = self._stats(streamer, len(ids), params, seed, t0, cancel, stops.hit)
            if constraint is not None:
                stats.closed_early, stats.constraint_s = constraint.closed_early[0], constraint.seconds
            yield Chunk("", stats)
        finally:
            if not finished:  # the consumer went away (page closed, Stop) or something failed
                cancel.set()
            with contextlib.suppress(FuturesTimeout):
                worker.result(timeout=5)

    def _stats(self, streamer: TokenQueue, n_prompt: int, params: SamplingParams, seed: int, t0: float,
               cancel: threading.Event, stopped_by_string: bool) -> ReplyStats:
        n = streamer.count
        if stopped_by_string:
            reason = "stop"
        elif cancel.is_set():
            reason = "cancelled"
        elif n >= params.max_new_tokens:
            reason = "length"
        else:
            reason = "stop"
        decode_tps = None
        if n > 1 and streamer.t_last > streamer.t_first:
            decode_tps = (n - 1) / (streamer.t_last - streamer.t_first)
        return ReplyStats(
            prompt_tokens=n_prompt, completion_tokens=n,
            ttft_s=(streamer.t_first - t0) if streamer.t_first else None,
            decode_tokens_per_s=decode_tps, total_s=time.perf_counter() - t0, finish_reason=reason, seed=seed,
            gpu_mem_in_use_gib=runtime.gpu_allocated_gib() if self.device.type == "cuda" else None,
            gpu_mem_peak_gib=runtime.gpu_peak_gib() if self.device.type == "cuda" else None,
        )

    # ---- batched generation -------------------------------------------------------------
    def generate(self, prompts: Sequence[str | Sequence[Message]], params: SamplingParams,
                 cancel: threading.Event | None = None, batch_size: int | None = None) -> list[Completion]:
        """One completion per prompt (a raw string, or chat messages rendered with the template).

        `batch_size` None: as many rows as free GPU memory holds (8 on a CPU)."""
        texts = [p if isinstance(p, str) else self.render(p) for p in prompts]
        cancel = cancel or threading.Event()
        seed = self._seed(params)
        if batch_size is None and self.device.type == "cuda":  # sized by the longest row (one batched encode)
            longest = max(map(len, self.tok(texts, add_special_tokens=False)["input_ids"]), default=0)
            batch_size = self._rows_that_fit(longest + params.max_new_tokens)
        batch_size = batch_size or 8
        batch_size = max(1, min(batch_size, len(texts)))
        out: list[Completion] = []
        start = 0
        while start < len(texts):
            try:
                out += self._generate_batch(texts[start:start + batch_size], params, cancel, seed + start, batch_size)
            except OutOfMemory:
                if batch_size == 1:
                    raise
                batch_size //= 2  # out of memory: the same rows again in smaller batches
                continue
            start += batch_size
        return out

    def _rows_that_fit(self, tokens_per_row: int) -> int:
        """Rows of `tokens_per_row` whose key/value cache and activations fit in 70% of free GPU memory."""
        cfg = self.model.config
        kv = fast.kv_bytes_per_token(cfg)
        # Per row besides its cache: the prefill's activations and a float32 row of logits at each step.
        per_row = tokens_per_row * (kv + 8 * cfg.hidden_size + 2 * cfg.intermediate_size) + 8 * cfg.vocab_size
        free = runtime.gpu_free_bytes() or 0
        return int(max(1, min(256, 0.7 * free // per_row)))

    def _generate_batch(self, texts: list[str], params: SamplingParams, cancel: threading.Event,
                        seed: int, rows: int | None = None) -> list[Completion]:
        if self.fast is not None:
            return self._generate_fast(texts, params, cancel, seed, rows or len(texts))
        # Left padding: every row's next token is then at the same (last) position.
        enc = self.tok(texts, return_tensors="pt", padding=True, padding_side="left",
                       add_special_tokens=False).to(self.device)
        kw = self._generation_kwargs(params, self._constraint(params, rows=len(texts)))
        if params.stop:
            kw.update(stop_strings=list(params.stop), tokenizer=self.tok)
        with self._lock, torch.inference_mode():
            torch.manual_seed(seed)
            try:
                seqs = self.model.generate(**enc, stopping_criteria=StoppingCriteriaList([CancelOnEvent(cancel)]), **kw)
            except BaseException as e:
                raise _user_error(e, self.info.name) from e
        new = seqs[:, enc["input_ids"].shape[1]:].tolist()
        results = []
        for row, mask in zip(new, enc["attention_mask"].sum(dim=1).tolist()):
            end = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            ids = row if end is None else row[: end + 1]
            results.append(self._completion(int(mask), ids, end is not None, params, cancel))
        return results

    def _completion(self, n_prompt: int, ids: list[int], ended: bool, params: SamplingParams,
                    cancel: threading.Event) -> Completion:
        """A finished row of a batch: its text cut at the first stop string, and why it ended."""
        text, hit = cut_at_stop(self.tok.decode(ids, skip_special_tokens=True), params.stop)
        return Completion(text=text, prompt_tokens=n_prompt, completion_tokens=len(ids),
                          finish_reason=finish_reason(ended or hit, cancel.is_set()))

    def _generate_fast(self, texts: list[str], params: SamplingParams, cancel: threading.Event, seed: int,
                       rows: int) -> list[Completion]:
        """`_generate_batch` through lab.fast; the decoder keeps `rows` rows so later batches of a run
        (the last one smaller) replay the same captured graph."""
        ids = [self.encode(t) for t in texts]
        with self._lock:
            try:
                res = None
                while res is None or res.clipped:  # LLM.int8 outliers past the slots: again with wider ones
                    res = self._decode_fast(ids, params, cancel, seed, rows)
            except BaseException as e:
                raise _user_error(e, self.info.name) from e
        return [self._completion(len(prompt), new, ended, params, cancel)
                for prompt, new, ended in zip(ids, res.tokens, res.finished)]

    def _decode_fast(self, ids: list[list[int]], params: SamplingParams, cancel: threading.Event, seed: int,
                     rows: int) -> fast.Decoded:
        sampler = fast.Sampler(params, self.eos_ids, self._constraint(params, rows=len(ids)))
        stopped = [False] * len(ids)
        tails: list[list[int]] = [[] for _ in ids]

        def on_tokens(got: list[int]) -> bool:  # stop strings: a row is done once its recent text has one
            for i, t in enumerate(got):
                if not stopped[i]:
                    tails[i] = (tails[i] + [t])[-24:]
                    text = self.tok.decode(tails[i], skip_special_tokens=True)
                    stopped[i] = t in self.eos_ids or any(s in text for s in params.stop)
            return all(stopped)

        torch.manual_seed(seed)
        dec = self.fast.decoder(max(rows, len(ids)), max(map(len, ids)) + params.max_new_tokens)
        return fast.decode(dec, ids, sampler, params.max_new_tokens, self.eos_ids, self.pad_id, cancel,
                           on_tokens=on_tokens if params.stop else None)

    def stream_many(self, prompts: Sequence[Sequence[Message]], params: Sequence[SamplingParams],
                    cancel: threading.Event | None = None) -> Iterator[tuple[int, Chunk]]:
        """Several chat replies from one batched generation, streamed as (row, Chunk); see lab.multistream."""
        from lab.multistream import stream_many

        return stream_many(self, prompts, params, cancel)

    # ---- scoring ------------------------------------------------------------------------
    def split_context(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of context and continuation, split the way likelihood harnesses do."""
        ((ctx, (cont,)),) = self._split_choices([context], [continuation])
        return ctx, cont

    def _split_choices(self, contexts: Sequence[str],
                       choices: Sequence[str]) -> list[tuple[list[int], list[list[int]]]]:
        """For each context: its ids and each choice's continuation ids.

        Trailing spaces of the context move to the continuations (" A" is one token, "A" another),
        and a continuation's ids are those of the whole string past the context's length. The
        tokenizer gets all strings in two batched calls (it encodes a batch on several threads).
        """
        heads, leads = [], []
        for context in contexts:
            n_spaces = len(context) - len(context.rstrip(" "))
            heads.append(context[:-n_spaces] if n_spaces else context)
            leads.append(context[len(heads[-1]):])
        ctx_ids = self._encode_sharing_starts(heads)
        k = len(choices)
        conts = self._continuations_from_last_line(heads, leads, choices, ctx_ids)
        if conts is None:
            full = self.tok([h + lead + c for h, lead in zip(heads, leads) for c in choices],
                            add_special_tokens=False)["input_ids"]
            conts = [[f[len(ctx):] for f in full[i * k:(i + 1) * k]] for i, ctx in enumerate(ctx_ids)]
        return list(zip(ctx_ids, conts))

    def _encode_sharing_starts(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, encoding a start that several texts share (a subject's few-shot
        examples: four fifths of each 5-shot MMLU prompt) once. A shared start is cut after a blank line
        that a letter follows; byte-level BPE tokenizers never merge across that boundary, so start and
        rest tokenize the same apart as together. That is checked for one text of every start against
        its whole encoding; if any differs, every text is encoded whole."""
        def encode(batch: list[str]) -> list[list[int]]:
            return self.tok(batch, add_special_tokens=False)["input_ids"] if batch else []

        if len(texts) < 8:
            return encode(texts)
        order = sorted(range(len(texts)), key=texts.__getitem__)
        shared = [0] * len(texts)
        for a, b in zip(order, order[1:]):
            n = common_length(texts[a], texts[b])
            shared[a], shared[b] = max(shared[a], n), max(shared[b], n)
        cuts = []
        for text, n in zip(texts, shared):
            cut = text.rfind("\n\n", 0, n) + 2
            cuts.append(cut if cut >= 64 and cut < len(text) and text[cut].isalpha() else 0)
        probe: dict[str, int] = {}  # each shared start, and the first text that has it
        for i, (t, c) in enumerate(zip(texts, cuts)):
            if c:
                probe.setdefault(t[:c], i)
        if not probe:
            return encode(texts)
        start_ids = dict(zip(probe, encode(list(probe))))
        rests = encode([t[c:] for t, c in zip(texts, cuts)])
        ids = [start_ids[t[:c]] + r if c else r for t, c, r in zip(texts, cuts, rests)]
        whole = encode([texts[i] for i in probe.values()])
        if any(ids[i] != w for i, w in zip(probe.values(), whole)):
            return encode(texts)
        return ids

    def _continuations_from_last_line(self, heads, leads, choices, ctx_ids) -> list[list[list[int]]] | None:
        """Continuation ids from each context's last line instead of the whole text (five long encodes per
        MMLU question were a sixth of a full MMLU run). Byte-level BPE tokenizers never merge across a
        newline followed by a letter, so the last line tokenizes the same alone; that is checked for every
        context, and the continuations for the first few against whole-text encoding. None: not applicable."""
        lines = []
        for h in heads:
            cut = h.rfind("\n") + 1
            if not 0 < cut < len(h) or not h[cut].isalpha():
                return None
            lines.append(h[cut:])
        line_ids = self.tok(lines, add_special_tokens=False)["input_ids"]
        if any(ctx[len(ctx) - len(li):] != li for ctx, li in zip(ctx_ids, line_ids)):
            return None
        k = len(choices)
        tails = self.tok([li + lead + c for li, lead in zip(lines, leads) for c in choices],
                         add_special_tokens=False)["input_ids"]
        conts = [[t[len(li):] for t in tails[i * k:(i + 1) * k]] for i, li in enumerate(line_ids)]
        sample = range(min(4, len(heads)))
        full = self.tok([heads[i] + leads[i] + c for i in sample for c in choices],
                        add_special_tokens=False)["input_ids"]
        for i in sample:
            for j in range(k):
                f = full[i * k + j]
                if f[:len(ctx_ids[i])] != ctx_ids[i] or f[len(ctx_ids[i]):] != conts[i][j]:
                    return None
        return conts

    def score_choices(self, prompts: Sequence[str], choices: Sequence[str],
                      batch_size: int | None = None) -> list[list[float]]:
        """log P(choice | prompt) for each prompt and choice, summed over the choice's tokens.

        When every choice is a single token (MMLU's letters), each prompt takes one forward pass
        and all choices are read from the same next-token distribution; prompts that share a long
        start (a subject's few-shot examples) compute it once (lab.prefix). `batch_size` None: as
        many rows as free GPU memory holds (8 on a CPU).
        """
        split = self._split_choices(prompts, choices)
        if all(len(cont) == 1 for _, conts in split for cont in conts):
            return self._score_next_token([(ctx, [c[0] for c in conts]) for ctx, conts in split], batch_size)
        flat = [(ctx, cont) for ctx, conts in split for cont in conts]
        scores = self._score_sequences(flat, batch_size or 8)
        k = len(choices)
        return [scores[i * k:(i + 1) * k] for i in range(len(prompts))]

    def _forward_last(self, seqs: list[list[int]], keep: int) -> torch.Tensor:
        """Log-softmax (float32) of the last `keep` positions of left-padded sequences."""
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with self._lock, torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=keep, use_cache=False).logits
        return torch.log_softmax(logits.float(), dim=-1)

    def _score_next_token(self, rows: list[tuple[list[int], list[int]]],
                          batch_size: int | None) -> list[list[float]]:
        out: list[list[float]] = [[] for _ in rows]
        ctxs = [ctx for ctx, _ in rows]
        for shared, idx in prefix_groups(ctxs):
            idx.sort(key=lambda i: len(ctxs[i]))  # similar lengths together: less padding
            todo = [idx[a:b] for a, b in self._scoring_batches([len(ctxs[i]) - shared for i in idx], shared,
                                                               batch_size)]
            picked: list[tuple[list[int], torch.Tensor]] = []
            while todo:
                part = todo.pop(0)
                try:
                    if shared:
                        with self._lock, torch.inference_mode():
                            if self._prefix is None:
                                self._prefix = PrefixScorer(self.model, self.pad_id)
                            kv = self._prefix.prefix_kv(ctxs[part[0]][:shared])
                            logp = self._prefix.next_logprobs(kv, shared, [ctxs[i][shared:] for i in part])
                    else:
                        logp = self._forward_last([ctxs[i] for i in part], keep=1)[:, -1]
                    cands = torch.tensor([rows[i][1] for i in part], device=logp.device)
                    picked.append((part, logp.gather(1, cands)))
                except torch.OutOfMemoryError:
                    runtime.release_gpu_memory()
                    if len(part) == 1:
                        raise _user_error(torch.OutOfMemoryError(), self.info.name) from None
                    half = len(part) // 2  # the memory estimate was wrong for this batch: halve it
                    todo[:0] = [part[:half], part[half:]]
                    continue
            # To the host once per group: a copy per batch would make the GPU wait for the host each time.
            for part, values in picked:
                for i, v in zip(part, values.tolist()):
                    out[i] = v
        return out

    def _scoring_batches(self, widths: list[int], shared: int, cap: int | None) -> list[tuple[int, int]]:
        """[start, end) batches of rows sorted by width (own tokens past the shared prefix)."""
        if self.device.type != "cuda":
            step = cap or 8
            return [(a, min(a + step, len(widths))) for a in range(0, len(widths), step)]
        cfg = self.model.config
        kv = fast.kv_bytes_per_token(cfg)
        free = 0.6 * (runtime.gpu_free_bytes() or 0)

        # Transformers' forward copies the prefix's cache for each row (three times: cache, concatenation,
        # attention); lab.prefix.suffix_forward reads its one copy.
        copies = 0 if reads_one_copy(self.model) else 3

        def max_rows(width: int) -> int:
            # the row's own tokens' activations, the prefix copies, one float32 row of logits
            per_row = copies * (shared + width) * kv + width * (16 * cfg.hidden_size + 6 * cfg.intermediate_size) \
                + 8 * cfg.vocab_size
            return min(cap or 1024, int(free // per_row))

        return plan_batches(widths, max_rows)

    def _score_sequences(self, pairs: list[tuple[list[int], list[int]]], batch_size: int) -> list[float]:
        out: list[float] = [0.0] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            # The last token is never an input: predicting continuation token j needs only what precedes it.
            seqs = [(pairs[i][0] + pairs[i][1])[:-1] for i in idx]
            longest = max(len(pairs[i][1]) for i in idx)
            logp = self._forward_last(seqs, keep=longest)
            for row, i in enumerate(idx):
                cont = pairs[i][1]
                picked = logp[row, longest - len(cont):]  # positions that predict each continuation token
                out[i] = picked.gather(-1, torch.tensor(cont, device=picked.device)[:, None]).sum().item()
        return out

    # ---- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Drop the weights so their memory (GPU included) goes back; the object is unusable after."""
        with self._lock:
            if self._fast is not None:
                self._fast.clear()
            self.model = None
            self._fast = self._prefix = None
        self._worker.shutdown(wait=False)
        runtime.release_gpu_memory()


class OutOfMemory(LabError):
    """A request ran out of GPU memory (the model is still loaded and usable)."""


def _user_error(e: BaseException, name: str) -> BaseException:
    if isinstance(e, torch.OutOfMemoryError):
        runtime.release_gpu_memory()
        return OutOfMemory(
            f"{name} ran out of GPU memory on this request; lower max new tokens or shorten the conversation."
        )
    return e
