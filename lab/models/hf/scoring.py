"""Scoring answer options: log P(choice | prompt) for every prompt and choice, as likelihood harnesses
compute it, with the work shared where prompts share it.

- Token ids are split as lm-evaluation-harness splits them: a context's trailing spaces move to the
  continuations (" A" is one token, "A" another), and a continuation's ids are those of the whole string
  past the context's length.
- When every choice is one token (MMLU's letters), each prompt takes one forward pass and every choice is
  read from the same next-token distribution; prompts sharing a long start (a subject's few-shot examples)
  compute it once (`lab.engine.prefix`). Otherwise each prompt + choice is scored whole.
- Tokenizing shares work too: starts that several prompts share are encoded once, and continuations come
  from the context's last line, each shortcut checked against whole-text encoding before it is trusted.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Sequence

import torch

from lab import runtime
from lab.engine.prefix import PrefixScorer, common_length, plan_batches, prefix_groups, reads_one_copy
from lab.models.hf.decoding import left_pad
from lab.models.hf.memory import scoring_rows, user_error


class ChoiceScorer:
    """Scores for one model and tokenizer; keeps the last shared prefix's keys and values for the next batch."""

    def __init__(self, model, tok, pad_id: int, lock: threading.Lock, name: str) -> None:
        self.model, self.tok, self.pad_id, self.lock, self.name = model, tok, pad_id, lock, name
        self.device = next(model.parameters()).device
        self.prefix: PrefixScorer | None = None

    def _give_way(self) -> None:
        """Between two layers of a scoring batch: a chat step that waits for the model runs now, not after the
        whole batch (a big MMLU batch is a second of GPU time). The batch itself, so its scores, is unchanged."""
        cuda = self.device.type == "cuda"
        self.lock.offer(lambda: torch.cuda.synchronize(self.device) if cuda else None)

    @contextlib.contextmanager
    def _locked(self):
        """The model, for one scoring batch that gives way between layers: `suffix_forward` calls the returned
        function itself; Transformers' forward reaches it through a hook on each decoder layer but the first."""
        offer = getattr(self.lock, "offer", None)
        with self.lock, torch.inference_mode():
            if offer is None:  # a plain lock: nobody to give way to
                yield None
                return
            hooks = [layer.register_forward_pre_hook(lambda *_: self._give_way())
                     for layer in list(getattr(getattr(self.model, "model", None), "layers", []))[1:]]
            try:
                yield self._give_way
            finally:
                for h in hooks:
                    h.remove()

    def split_context(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of context and continuation, split the way likelihood harnesses do."""
        ((ctx, (cont,)),) = self.split_choices([context], [continuation])
        return ctx, cont

    def split_choices(self, contexts: Sequence[str],
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
        ctx_ids = self.encode_sharing_starts(heads)
        k = len(choices)
        conts = self._continuations_from_last_line(heads, leads, choices, ctx_ids)
        if conts is None:
            full = self.tok([h + lead + c for h, lead in zip(heads, leads) for c in choices],
                            add_special_tokens=False)["input_ids"]
            conts = [[f[len(ctx):] for f in full[i * k:(i + 1) * k]] for i, ctx in enumerate(ctx_ids)]
        return list(zip(ctx_ids, conts))

    def encode_sharing_starts(self, texts: list[str]) -> list[list[int]]:
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
        start (a subject's few-shot examples) compute it once (lab.engine.prefix). `batch_size` None: as
        many rows as free GPU memory holds (8 on a CPU).
        """
        split = self.split_choices(prompts, choices)
        if all(len(cont) == 1 for _, conts in split for cont in conts):
            return self._score_next_token([(ctx, [c[0] for c in conts]) for ctx, conts in split], batch_size)
        flat = [(ctx, cont) for ctx, conts in split for cont in conts]
        scores = self._score_sequences(flat, batch_size or 8)
        k = len(choices)
        return [scores[i * k:(i + 1) * k] for i in range(len(prompts))]

    def forward_last(self, seqs: list[list[int]], keep: int) -> torch.Tensor:
        """Log-softmax (float32) of the last `keep` positions of left-padded sequences."""
        ids, mask, _ = left_pad(seqs, self.pad_id, self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with self._locked():
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
                        with self._locked() as between:
                            if self.prefix is None:
                                self.prefix = PrefixScorer(self.model, self.pad_id)
                            kv = self.prefix.prefix_kv(ctxs[part[0]][:shared])
                            logp = self.prefix.next_logprobs(kv, shared, [ctxs[i][shared:] for i in part], between)
                    else:
                        logp = self.forward_last([ctxs[i] for i in part], keep=1)[:, -1]
                    cands = torch.tensor([rows[i][1] for i in part], device=logp.device)
                    picked.append((part, logp.gather(1, cands)))
                except torch.OutOfMemoryError:
                    runtime.release_gpu_memory()
                    if len(part) == 1:
                        raise user_error(torch.OutOfMemoryError(), self.name) from None
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
        # Transformers' forward copies the prefix's cache for each row (three times: cache, concatenation,
        # attention); suffix_forward reads its one copy.
        copies = 0 if reads_one_copy(self.model) else 3
        return plan_batches(widths, lambda width: scoring_rows(self.model.config, width, shared, copies, cap))

    def _score_sequences(self, pairs: list[tuple[list[int], list[int]]], batch_size: int) -> list[float]:
        out: list[float] = [0.0] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            # The last token is never an input: predicting continuation token j needs only what precedes it.
            seqs = [(pairs[i][0] + pairs[i][1])[:-1] for i in idx]
            longest = max(len(pairs[i][1]) for i in idx)
            logp = self.forward_last(seqs, keep=longest)
            for row, i in enumerate(idx):
                cont = pairs[i][1]
                picked = logp[row, longest - len(cont):]  # positions that predict each continuation token
                out[i] = picked.gather(-1, torch.tensor(cont, device=picked.device)[:, None]).sum().item()
        return out

