"""The work behind lab.serve's generating routes, run off the event loop: a chat's budget of new tokens, the rows
of a request (`n`, each with its own seed), and a completion's choices from text or token-id prompts, with
OpenAI's legacy log-probabilities and echo. Errors a client caused are ApiError or LabError (both a 400).

How rows are seeded: row k of a request runs with seed + k, where seed is the request's (else one drawn), so row
k is exactly what an n = 1 request with seed + k returns. On a model with continuous batching (lab.serve.rows)
each row is a row of the running batch with its own seed; elsewhere (a remote model, or with log-probabilities) a
sampled row runs alone through the model's batched generate (batch size 1, which seeds the batch at row k with
seed + k), and greedy rows, all alike, run as one batch.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from lab.errors import LabError
from lab.interface import MAX_NEW_TOKENS, TokenLogprobs, draw_seed
from lab.serve.replies import ApiError, finish_reason


def chat_budget(model, req) -> int:
    """The reply's max new tokens: as asked, else (as vLLM) what the context leaves after the prompt."""
    if req.max_tokens is not None:
        return req.max_tokens
    used = model.count_chat_tokens(req.messages, req.tools)
    left = min(model.info.context_length - used, MAX_NEW_TOKENS)
    if left < 1:
        raise LabError(f"The messages take {used:,} tokens, which fills {model.info.name}'s context of "
                       f"{model.info.context_length:,} tokens; shorten them.")
    return left


def row_seeds(params, rows: int):
    """Rows of one request: row k runs with seed + k (the request's seed, else one drawn), alone when sampled, so
    it is exactly the reply an n = 1 request with that seed gets; greedy rows, all alike, run as one batch."""
    seed = draw_seed(params.seed)
    return replace(params, seed=seed), (None if params.greedy else 1), [seed + k for k in range(rows)]


def chat_rows(model, req, cancel: threading.Event) -> tuple[list[dict], int]:
    """The `n` rows of a chat request made whole (for n > 1 or log-probabilities): [{text, finish, tokens,
    logprobs}], and the prompt's token count."""
    prompt = model.render(req.messages, tools=req.tools)
    used = model.count_chat_tokens(req.messages, req.tools)
    budget = chat_budget(model, req)
    if used + budget > model.info.context_length:
        raise LabError(f"The prompt ({used:,} tokens) plus max new tokens ({budget:,}) exceeds {model.info.name}'s "
                       f"context of {model.info.context_length:,} tokens; shorten the conversation.")
    params, batch, seeds = row_seeds(replace(req.params, max_new_tokens=budget), req.n)
    if req.logprobs:
        outs = [model.generate_logprobs(prompt, replace(params, seed=s), req.top_logprobs, cancel) for s in seeds]
        return [{"text": o.text, "finish": o.finish_reason, "tokens": o.completion_tokens, "logprobs": o.logprobs}
                for o in outs], used
    outs = model.generate([prompt] * req.n, params, cancel, batch_size=batch)
    return [{"text": o.text, "finish": o.finish_reason, "tokens": o.completion_tokens, "logprobs": None}
            for o in outs], used


def check_completion(model, req) -> list[int]:
    """A /v1/completions request checked against the model (what its prompts and fields need); each prompt's tokens."""
    scored = req.logprobs is not None or req.echo
    ids = [p for p in req.prompts if not isinstance(p, str)]
    if ids and not model.capabilities.token_ids:
        raise ApiError(400, f"A prompt of token ids needs a model loaded in this process, and {model.info.name} is "
                            "served from elsewhere; send text.", param="prompt")
    if scored and not model.capabilities.logprobs:
        raise ApiError(400, f"'logprobs' and 'echo' need a model loaded in this process, and {model.info.name} "
                            "is served from elsewhere.", param="logprobs")
    context = model.info.context_length
    counts = [model.count_tokens(p) if isinstance(p, str) else len(model.token_ids(p)) for p in req.prompts]
    for i, n in enumerate(counts):
        if n == 0 and (req.max_tokens or req.logprobs is not None):  # nothing to continue or to score
            raise ApiError(400, f"Prompt {i + 1} is empty; a completion continues text, so send some.", param="prompt")
        if n + req.max_tokens > context:
            raise ApiError(400, f"Prompt {i + 1} ({n:,} tokens) plus max_tokens ({req.max_tokens:,}) exceeds "
                                f"{model.info.name}'s context of {context:,} tokens; shorten it.", param="prompt")
    return counts


def complete(model, req, cancel: threading.Event) -> tuple[list[dict], tuple[int, int]]:
    """The choices of a /v1/completions request (`n` rows per prompt, choice k of prompt k // n) computed whole,
    and its (prompt, completion) token counts; a prompt is text or token ids. (Where the model has
    `capabilities.rows` and nothing is scored, lab.serve.rows streams them instead.)"""
    counts = check_completion(model, req)
    scored = req.logprobs is not None or req.echo
    top = req.logprobs or 0
    rows = [p for p in req.prompts for _ in range(req.n)]
    params, batch, seeds = row_seeds(replace(req.params, max_new_tokens=max(1, req.max_tokens)), len(rows))
    choices, generated = [], 0
    if not scored and req.max_tokens:
        if req.n == 1:  # the prompts as the model batches them (batch from prompt i: seed + i)
            batch = None
        for i, c in enumerate(model.generate(rows, params, cancel, batch_size=batch)):
            choices.append({"index": i, "text": c.text, "logprobs": None,
                            "finish_reason": finish_reason(c.finish_reason)})
            generated += c.completion_tokens
        return choices, (sum(counts), generated)
    for i, (prompt, seed) in enumerate(zip(rows, seeds)):
        text, lp, reason = "", TokenLogprobs(), "length"
        if req.max_tokens:
            out = model.generate_logprobs(prompt, replace(params, seed=seed), top, cancel)
            text, lp, reason = out.text, out.logprobs, out.finish_reason
            generated += out.completion_tokens
        if req.echo:
            shown = prompt if isinstance(prompt, str) else model.decode(prompt)
            if req.logprobs is not None:
                lp = model.prompt_logprobs(prompt, top).extend(lp, offset=len(shown))
            text = shown + text
        choices.append({"index": i, "text": text, "logprobs": lp.to_openai() if req.logprobs is not None else None,
                        "finish_reason": finish_reason(reason)})
    return choices, (sum(counts), generated)
