"""The Transformers backend: load (bitsandbytes 4/8-bit, bf16, fp16, fp32; CUDA or CPU), stream a
chat reply, generate for a batch of prompts, and score answer options.

Use `lab.models.load_model()` to get one; this module does the work once a checkpoint is local.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Iterator, Sequence

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, LogitsProcessorList,
                          StoppingCriteriaList)

from lab import runtime
from lab.backend import Chunk, Completion, Message, ModelInfo, ReplyStats, SamplingParams
from lab.decode import CancelOnEvent, IncrementalDecoder, StopMatcher, TokenQueue, TopKTopP, cut_at_stop
from lab.errors import LabError

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
    return HFModel(model, tokenizer, info)


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
                    self.model.generate(
                        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([CancelOnEvent(cancel)]),
                        **self._generation_kwargs(params, constraint),
                    )
            except BaseException as e:  # handed to the consumer, which raises it in its own thread
                failure.append(e)
            finally:
                streamer.end()

        worker = threading.Thread(target=work, name="lab-generate", daemon=True)
        worker.start()
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
            worker.join()
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
            worker.join(timeout=5)

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
                 cancel: threading.Event | None = None, batch_size: int = 8) -> list[Completion]:
        """One completion per prompt (a raw string, or chat messages rendered with the template)."""
        texts = [p if isinstance(p, str) else self.render(p) for p in prompts]
        cancel = cancel or threading.Event()
        seed = self._seed(params)
        out: list[Completion] = []
        for start in range(0, len(texts), batch_size):
            out += self._generate_batch(texts[start:start + batch_size], params, cancel, seed + start)
        return out

    def _generate_batch(self, texts: list[str], params: SamplingParams, cancel: threading.Event,
                        seed: int) -> list[Completion]:
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
            text, hit = cut_at_stop(self.tok.decode(ids, skip_special_tokens=True), params.stop)
            if end is not None or hit:
                reason = "stop"
            elif cancel.is_set():
                reason = "cancelled"
            else:
                reason = "length"
            results.append(Completion(text=text, prompt_tokens=int(mask), completion_tokens=len(ids),
                                      finish_reason=reason))
        return results

    # ---- scoring ------------------------------------------------------------------------
    def split_context(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of context and continuation, split the way likelihood harnesses do."""
        ctx, (cont,) = self._split_choices(context, [continuation])
        return ctx, cont

    def _split_choices(self, context: str, choices: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """The context's ids (encoded once) and each choice's continuation ids.

        Trailing spaces of the context move to the continuations (" A" is one token, "A" another),
        and a continuation's ids are those of the whole string past the context's length.
        """
        n_spaces = len(context) - len(context.rstrip(" "))
        context, lead = (context[:-n_spaces], context[-n_spaces:]) if n_spaces else (context, "")
        ctx = self.encode(context)
        return ctx, [self.encode(context + lead + c)[len(ctx):] for c in choices]

    def score_choices(self, prompts: Sequence[str], choices: Sequence[str], batch_size: int = 8) -> list[list[float]]:
        """log P(choice | prompt) for each prompt and choice, summed over the choice's tokens.

        When every choice is a single token (MMLU's letters), each prompt takes one forward pass
        and all choices are read from the same next-token distribution.
        """
        split = [self._split_choices(p, choices) for p in prompts]
        if all(len(cont) == 1 for _, conts in split for cont in conts):
            return self._score_next_token([(ctx, [c[0] for c in conts]) for ctx, conts in split], batch_size)
        flat = [(ctx, cont) for ctx, conts in split for cont in conts]
        scores = self._score_sequences(flat, batch_size)
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

    def _score_next_token(self, rows: list[tuple[list[int], list[int]]], batch_size: int) -> list[list[float]]:
        out: list[list[float]] = []
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            logp = self._forward_last([ctx for ctx, _ in batch], keep=1)[:, -1]
            for i, (_, cands) in enumerate(batch):
                out.append(logp[i, cands].tolist())
        return out

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
            self.model = None
        runtime.release_gpu_memory()


def _user_error(e: BaseException, name: str) -> BaseException:
    if isinstance(e, torch.OutOfMemoryError):
        runtime.release_gpu_memory()
        return LabError(
            f"{name} ran out of GPU memory on this request; lower max new tokens or shorten the conversation."
        )
    return e
