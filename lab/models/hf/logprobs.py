"""Log-probabilities from a local Transformers model: what `/v1/completions` returns for `logprobs`
and `echo` (OpenAI's legacy completions shape), behind `HFModel.prompt_logprobs` and `generate_logprobs`.

    scored = hf.prompt_logprobs("The capital of France is Paris", top=5)   # one forward pass (echo)
    out = hf.generate_logprobs("The capital of France is", params, top=5)
    out.text, out.logprobs.token_logprobs, out.logprobs.top_logprobs

Every number is the log-softmax of the model's raw logits at that position: the model's own
distribution, before the repetition penalty, temperature, top-k and top-p (which only shape how the
next token is drawn) and before any grammar. So the log-probability of a token is the same whatever
the sampling settings, and equals what a likelihood harness computes with a forward pass. A prompt's
first token has none (nothing precedes it): OpenAI and vLLM write null there, and so does this module.

Tokens are shown as their own decoded text, so a character split over two byte-level tokens shows as
"�" twice; `text_offset` is where each token starts in the text returned (both tokens of such a
character point into it).

Works on an `HFModel`: its `model`, `tok`, `encode` and `lock` (one forward or generate at a time).
"""

from __future__ import annotations

import threading
import weakref
from typing import Sequence

import torch
from transformers import StoppingCriteriaList

from lab.engine.sampling import generate_kwargs
from lab.interface import Generated, SamplingParams, TokenLogprobs, draw_seed, finish_reason
from lab.models.hf.decoding import CancelOnEvent, cut_at_stop

MAX_TOP = 20  # as vLLM's default max_logprobs
CHUNK = 256  # positions per slice of the output projection: a 2K-token prompt never holds 2K x vocab floats


class _Pieces:
    """Token id -> its text, cached: the same few thousand ids come up again and again."""

    def __init__(self, tok) -> None:
        self.tok = tok
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self.cache.get(token_id)
        if text is None:
            text = self.cache[token_id] = self.tok.decode([token_id])
        return text

    def top(self, values: list[float], ids: list[int], chosen_id: int, chosen: float) -> dict[str, float]:
        """The top-n alternatives and the chosen token, as OpenAI sends them (up to n + 1 entries)."""
        out: dict[str, float] = {}
        for v, i in zip(values, ids):
            out.setdefault(self(i), v)  # two ids with one text ("�"): the likelier one stands
        out.setdefault(self(chosen_id), chosen)
        return out


def _check_top(top: int) -> int:
    if not 0 <= top <= MAX_TOP:
        raise ValueError(f"top must be between 0 and {MAX_TOP}, got {top}")
    return top


def _offsets(hf, text: str, ids: list[int]) -> list[int]:
    """Where each of the text's tokens starts: the fast tokenizer's offsets, else decoded prefixes."""
    try:
        enc = hf.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        if enc["input_ids"] == ids:
            return [start for start, _ in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        pass
    return [len(hf.tok.decode(ids[:i])) for i in range(len(ids))]


def _hidden_and_head(model, input_ids: torch.Tensor):
    """The last hidden states and the output projection, so logits can be made a slice at a time;
    None for models whose logits are more than a projection of the hidden states."""
    cfg = model.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None:
        return None
    hidden = decoder(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
    return hidden.last_hidden_state[0], head


class _Last:
    """A prompt scored on a model, kept (the last few): the choices of one question share its context, so
    scoring them one request each (as likelihood harnesses do) reuses the context's log-probabilities,
    even when requests for several questions interleave."""

    def __init__(self, ids: list[int], top: int, chosen: list[float], tops: list) -> None:
        self.ids, self.top, self.chosen, self.tops = ids, top, chosen, tops

    def shared(self, ids: list[int], top: int) -> int:
        """How many leading positions (of 1..n-1) of `ids` this one already scored."""
        if top != self.top:
            return 0
        n = 0
        for a, b in zip(self.ids, ids):
            if a != b:
                break
            n += 1
        return max(0, n - 1)


_LAST: "weakref.WeakKeyDictionary[object, list[_Last]]" = weakref.WeakKeyDictionary()
KEPT = 8  # prompts kept per model


def _score(hf, ids: list[int], top: int) -> tuple[list[float], list[tuple[list[float], list[int]]]]:
    """For positions 1..n-1: log P(ids[i] | ids[:i]) and the top-n (values, ids) there. One forward pass;
    the normalizer over the vocabulary (the costly part on a CPU) only for positions not scored last time."""
    model = hf.model
    x = torch.tensor([ids[:-1]], device=model.device)
    with hf.lock, torch.inference_mode():
        kept = _LAST.setdefault(hf, [])
        done, last = max(((k.shared(ids, top), k) for k in kept), key=lambda pair: pair[0], default=(0, None))
        chosen, tops = (last.chosen[:done], last.tops[:done]) if done else ([], [])
        todo = len(ids) - 1 - done
        split = _hidden_and_head(model, x) if todo else None
        if todo and split is None:
            logits = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False,
                           logits_to_keep=todo).logits[0]
        for start in range(0, todo, CHUNK):
            if split is None:
                part = logits[start:start + CHUNK].float()
            else:
                hidden, head = split
                part = head(hidden[done + start:done + start + CHUNK]).float()
            lse = torch.logsumexp(part, dim=-1)
            target = torch.tensor(ids[done + start + 1:done + start + 1 + part.shape[0]], device=part.device)
            chosen += (part.gather(-1, target[:, None])[:, 0] - lse).tolist()
            if top == 1:
                values, idx = part.max(dim=-1, keepdim=True)
            elif top:
                values, idx = part.topk(top, dim=-1)
            if top:
                tops += list(zip((values - lse[:, None]).tolist(), idx.tolist()))
            else:
                tops += [([], [])] * part.shape[0]
        kept.insert(0, _Last(list(ids), top, chosen, tops))
        del kept[KEPT:]
    return chosen, tops


def _ids_and_text(hf, prompt: str | Sequence[int]) -> tuple[list[int], str]:
    """A prompt as raw text or as token ids (`hf.decode` gives their text): its ids and its text."""
    if isinstance(prompt, str):
        return hf.encode(prompt), prompt
    return hf.token_ids(prompt), hf.decode(prompt)


def prompt_logprobs(hf, text: str | Sequence[int], top: int = 0) -> TokenLogprobs:
    """Every token of `text` (or of these token ids) with log P(token | the tokens before it), and the top `top`
    alternatives."""
    _check_top(top)
    ids, text = _ids_and_text(hf, text)
    if not ids:
        return TokenLogprobs()
    pieces = _Pieces(hf.tok)
    chosen, tops = _score(hf, ids, top) if len(ids) > 1 else ([], [])
    return TokenLogprobs(
        tokens=[pieces(i) for i in ids], token_ids=list(ids),
        token_logprobs=[None, *chosen],
        top_logprobs=[None, *(pieces.top(v, k, t, c) for (v, k), t, c in zip(tops, ids[1:], chosen))],
        text_offset=_offsets(hf, text, ids),
    )


def generate_with_logprobs(hf, prompt: str | Sequence[int], params: SamplingParams, top: int = 0,
                           cancel: threading.Event | None = None) -> Generated:
    """Continue `prompt` (raw text, no chat template, or token ids) and return each new token's log-probability
    and top alternatives, read from the raw logits of the very step that chose it. A `response_format` (JSON
    mode, a forced tool call) is enforced as in any reply; the numbers stay the raw logits', before its mask."""
    _check_top(top)
    ids, _ = _ids_and_text(hf, prompt)
    eos = hf.eos_ids
    kw = generate_kwargs([params], [0], len(ids), eos, hf.pad_id, hf.constraint(params, rows=1))
    if params.stop:
        kw.update(stop_strings=list(params.stop), tokenizer=hf.tok)
    cancel = cancel or threading.Event()
    x = torch.tensor([ids], device=hf.model.device)
    seed = draw_seed(params.seed)
    with hf.lock, torch.inference_mode():
        torch.manual_seed(seed)
        out = hf.model.generate(input_ids=x, attention_mask=torch.ones_like(x), output_logits=True,
                                return_dict_in_generate=True,
                                stopping_criteria=StoppingCriteriaList([CancelOnEvent(cancel)]), **kw)
        new = out.sequences[0, len(ids):].tolist()
        end = next((i for i, t in enumerate(new) if t in eos), None)
        kept = new if end is None else new[:end]  # the end-of-text token is not part of the text
        pieces = _Pieces(hf.tok)
        chosen, tops = [], []
        for step, token_id in enumerate(kept):
            logp = torch.log_softmax(out.logits[step][0].float(), dim=-1)
            chosen.append(float(logp[token_id]))
            if top:
                values, idx = logp.topk(top)
                tops.append(pieces.top(values.tolist(), idx.tolist(), token_id, chosen[-1]))
            else:
                tops.append({pieces(token_id): chosen[-1]})
    full = hf.tok.decode(kept, skip_special_tokens=True)
    text, hit = cut_at_stop(full, params.stop)
    offsets = [len(hf.tok.decode(kept[:i], skip_special_tokens=True)) for i in range(len(kept))]
    n = sum(1 for o in offsets if o < len(text)) if hit else len(kept)  # tokens past a stop string go
    reason = finish_reason(end is not None or hit, cancel.is_set())
    logprobs = TokenLogprobs([pieces(t) for t in kept[:n]], kept[:n], chosen[:n], tops[:n], offsets[:n])
    return Generated(text, logprobs, len(ids), len(new) if end is None else end + 1, reason)
