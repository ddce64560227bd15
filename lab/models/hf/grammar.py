"""JSON mode enforced while decoding, not hoped for: a logits processor that masks, each step, every token
that cannot continue a valid document.

The constraint is xgrammar (https://github.com/mlc-ai/xgrammar): it compiles the schema into a grammar
over the tokenizer's vocabulary, and its per-token work is a C++ matcher filling a bitmask (tens of
microseconds). Chosen over Outlines and lm-format-enforcer for that speed, its plain logits-processor
integration with Transformers 5, and because vLLM and SGLang use it, so a schema behaves the same behind
`lab.serve` and vLLM.

A forced tool call (OpenAI's tool_choice "required" or a named function) is the same machinery: the grammar is
the literal `<tool_call>\n`, a JSON object {"name": the function, "arguments": valid for its parameters}, and
`\n</tool_call>`, then the end of the reply.

A document still open when max new tokens is nearly spent would not parse, so the last `reserve` tokens
close it: inside a string the closing quote is preferred; outside, the end of the reply, `}`, `]` and
digits, in that order, among the tokens the grammar allows; when none is allowed, any allowed token but
bare whitespace (so required keys get written out). The reply then says it was closed early.
"""

from __future__ import annotations

import json
import threading
import time

import torch
from transformers import LogitsProcessor

from lab.errors import LabError
from lab.interface import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, schema_of

CLOSERS = ("}", "]", *"0123456789")  # preferred, in order, outside a string when the budget runs out
RESERVE_TOKENS = 48  # at most this many of max new tokens are kept for closing the document
# Whitespace between tokens is free (models pretty-print), but a run of it is capped: a model can fall
# into writing newlines forever inside a constrained document. 32 covers indentation 16 levels deep.
MAX_WHITESPACE = 32


def call_schema(fmt: dict) -> dict:
    """The JSON Schema of the object inside a forced call's <tool_call> block (a `response_format` of type
    tool_call, as lab.chat.tools.forced_call makes it): name first, then arguments."""
    options = [{"type": "object", "properties": {"name": {"const": t["name"]}, "arguments": t["parameters"]},
                "required": ["name", "arguments"], "additionalProperties": False} for t in fmt["tools"]]
    return options[0] if len(options) == 1 else {"anyOf": options}


class Grammars:
    """Compiles response formats for one tokenizer, once each (xgrammar caches the compiled grammars)."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids)
        self.compiler = xgr.GrammarCompiler(self.info)
        self.vocab_size = vocab_size
        self.stop_ids = list(stop_ids)
        single = {ch: ids[0] for ch in ('"', *CLOSERS)
                  if len(ids := tokenizer.encode(ch, add_special_tokens=False)) == 1}
        self.quote = single.get('"')
        self.closers = [single[ch] for ch in CLOSERS if ch in single]
        # Tokens that are only whitespace: while closing, they would spend the budget and change nothing.
        # Tokens with a quote or a backslash: the only ones that move a row in or out of a string.
        self.blank = torch.zeros(vocab_size, dtype=torch.bool)
        self.quoting: dict[int, str] = {}
        for piece, i in tokenizer.get_vocab().items():
            if i >= vocab_size or not piece:
                continue
            text = tokenizer.convert_tokens_to_string([piece])
            if not text.strip():
                self.blank[i] = True
            elif '"' in text or "\\" in text:
                self.quoting[i] = text
        self._lock = threading.Lock()

    def compile(self, fmt: dict):
        schema = schema_of(fmt)
        with self._lock:
            try:
                if fmt.get("type") == "tool_call":
                    return self.compiler.compile_grammar(self._tool_call(fmt))
                if schema is None:  # json_object: any object, as OpenAI's JSON mode promises
                    return self.compiler.compile_json_schema('{"type": "object"}', any_whitespace=True,
                                                             max_whitespace_cnt=MAX_WHITESPACE, strict_mode=False)
                return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=True,
                                                         max_whitespace_cnt=MAX_WHITESPACE, strict_mode=True)
            except Exception as e:  # xgrammar refuses schema features it cannot express
                raise LabError(f"The JSON Schema cannot be enforced ({str(e).splitlines()[0]}); "
                               "simplify it or turn the schema off.") from None

    def _tool_call(self, fmt: dict):
        """One <tool_call> block as Qwen2.5's template writes it, its object held to `call_schema`."""
        xgr = self.xgr

        def literal(text: str):
            return xgr.Grammar.from_ebnf(f"root ::= {json.dumps(text)}")

        # No free whitespace: the object reads as the template's tojson writes it ({"name": ..., "arguments": ...}).
        inner = xgr.Grammar.from_json_schema(json.dumps(call_schema(fmt)), any_whitespace=False, strict_mode=True)
        return xgr.Grammar.concat(literal(TOOL_CALL_OPEN + "\n"), inner, literal("\n" + TOOL_CALL_CLOSE))

    def constraint(self, fmt: dict, rows: int, max_new_tokens: int) -> "GrammarConstraint":
        return GrammarConstraint(self, [self.compile(fmt)] * rows, max_new_tokens)


class GrammarConstraint(LogitsProcessor):
    """Masks, each step, the tokens that cannot continue a valid document (one matcher per row).

    Put it first among the logits processors: top-k and top-p must choose among allowed tokens only,
    or they could keep k tokens that are all forbidden. One instance serves one generate() call.
    """

    def __init__(self, grammars: Grammars, compiled: list, max_new_tokens: int) -> None:
        xgr = grammars.xgr
        self.g = grammars
        self.matchers = [xgr.GrammarMatcher(c) for c in compiled]
        self.bitmask = xgr.allocate_token_bitmask(len(compiled), grammars.vocab_size)
        self.reserve = min(RESERVE_TOKENS, max_new_tokens // 4)
        self.max_new_tokens = max_new_tokens
        self.prompt_len: int | None = None
        self.closed_early = [False] * len(compiled)
        self.in_string = [False] * len(compiled)
        self.escaped = [False] * len(compiled)
        self.seconds = 0.0  # time spent in this processor: what JSON mode costs per reply

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        scores = self._mask(input_ids, scores)
        self.seconds += time.perf_counter() - t
        return scores

    def _mask(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        else:  # the previous step's tokens, now that they are chosen
            for i, m in enumerate(self.matchers):
                if not m.is_terminated():
                    tid = int(input_ids[i, -1])
                    if not m.accept_token(tid):
                        raise RuntimeError(f"row {i}: the grammar refused token {tid} it allowed")
                    self._track(i, tid)
        for i, m in enumerate(self.matchers):
            if m.is_terminated():
                self.bitmask[i].fill_(-1)  # a finished row (padding from now on) is left alone
            else:
                m.fill_next_token_bitmask(self.bitmask, i)
        # xgrammar masks on the CPU or on CUDA, in place.
        self.g.xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device, non_blocking=True))
        if self.max_new_tokens - (input_ids.shape[1] - self.prompt_len) <= self.reserve:
            self._close(scores)
        return scores

    def _track(self, i: int, tid: int) -> None:
        """Whether row i is inside a JSON string now (the grammar knows, but does not say)."""
        text = self.g.quoting.get(tid)
        if text is None:
            self.escaped[i] = False  # any other token's first character ends a pending escape
            return
        for ch in text:
            if self.escaped[i]:
                self.escaped[i] = False
            elif self.in_string[i] and ch == "\\":
                self.escaped[i] = True
            elif ch == '"':
                self.in_string[i] = not self.in_string[i]

    def _close(self, scores: torch.Tensor) -> None:
        """Steer each unfinished row to the end: the most closing token the grammar allows, else
        any allowed token that is not just whitespace."""
        bits = self.bitmask.cpu()
        for i, m in enumerate(self.matchers):
            if m.is_terminated():
                continue
            prefer = [self.g.quote] if self.in_string[i] else [*self.g.stop_ids, *self.g.closers]
            for tid in prefer:
                if tid is not None and tid < scores.shape[-1] and (int(bits[i, tid // 32]) >> (tid % 32)) & 1:
                    keep = scores[i, tid].clone()
                    scores[i].fill_(float("-inf"))
                    scores[i, tid] = keep if torch.isfinite(keep) else 0.0
                    self.closed_early[i] |= tid not in self.g.stop_ids  # ending a finished document is no steer
                    break
            else:
                blank = self.g.blank[: scores.shape[-1]].to(scores.device)
                if torch.isfinite(scores[i].masked_fill(blank, float("-inf"))).any():
                    scores[i].masked_fill_(blank, float("-inf"))
                    self.closed_early[i] = True
