"""The load bench's clients: the `openai` SDK in processes of their own (spawned), each one stream at a time. This
module imports only the SDK, so a client process starts in a fraction of a second and holds no model library."""

from __future__ import annotations

import time


class Api:
    """The openai SDK's client for the server and the model name it serves."""

    def __init__(self, url: str, name: str) -> None:
        import openai

        self.url, self.name = url, name
        self.client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)


def one_stream(api: Api, messages: list[dict], new_tokens: int, seed: int) -> dict:
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    for c in api.client.chat.completions.create(model=api.name, messages=messages, max_tokens=new_tokens, seed=seed,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}):
        now = time.perf_counter()
        if c.choices and c.choices[0].delta.content:
            first = first or now
            last = now
        if c.usage is not None:
            tokens = c.usage.completion_tokens
    assert tokens == new_tokens, (tokens, new_tokens)
    return {"ttft": first - t0, "tok_s": (tokens - 1) / (last - first) if last > first else None, "tokens": tokens,
            "start": t0, "end": time.perf_counter()}


_api: Api | None = None  # one client per client process


def _client_ready(url: str, name: str) -> None:
    global _api
    _api = Api(url, name)


def _stream_at(go: float, messages: list[dict], new_tokens: int, seed: int) -> dict:
    """In a client process: one stream started at wall-clock time `go`; its times on the wall clock too."""
    time.sleep(max(0.0, go - time.time()))
    shift = time.time() - time.perf_counter()
    out = one_stream(_api, messages, new_tokens, seed)
    return out | {"start": out["start"] + shift, "end": out["end"] + shift}


class Clients:
    """Client processes for concurrent streams: as real clients, they parse their streams outside the server's
    process, so the server's decode loop never waits for the load generator's own Python (the GIL)."""

    def __init__(self, url: str, name: str, processes: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_client_ready, initargs=(url, name))
        list(self.pool.map(time.sleep, [0.5] * processes))  # every process started (and openai imported)

    def close(self) -> None:
        self.pool.shutdown()


def many(clients: Clients, messages, new_tokens: int, n: int, stagger: float = 0.0,
         seed: int = 0) -> tuple[float, list[dict]]:
    """n streams at once (each started `stagger` s after the one before), each from a client process; the wall
    time from the first start to the last end, and each stream's numbers."""
    go = time.time() + 0.2
    futures = [clients.pool.submit(_stream_at, go + i * stagger, messages, new_tokens, seed + i) for i in range(n)]
    out = [f.result() for f in futures]
    return max(o["end"] for o in out) - go, out


def solo(clients: Clients, messages, new_tokens: int, seed: int) -> dict:
    """One stream alone, from a client process."""
    return many(clients, messages, new_tokens, 1, seed=seed)[1][0]
