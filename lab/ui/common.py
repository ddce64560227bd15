"""What the tabs share: Stop per browser session, how often the page updates, a form's numbers checked by the one
rule, errors shown beside what caused them, and long work (an evaluation, variants on a benchmark) run in the
background while the event that started it reports its progress.

The page's rule for errors: one that a user can cause never replaces or locks a component. A handler wrapped in
`errors_inline` answers a LabError by writing `notice(sentence)` into one output of its own (a Markdown beside
the form) and leaving every other output as it was; raising gr.Error is for API-only endpoints (gr.api), where
the program gets the sentence as its exception. (lab.ui.page's CSS also hides Gradio's red "Error" overlay, so an
error that slips through still leaves the component usable, its reason in the toast.)"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import threading
from typing import Callable, Iterator

import gradio as gr

from lab.errors import LabError
from lab.interface import check_number
from lab.pump import Pump

# Replies that run at once, from every visitor and /chat caller: each joins the model's running batch
# (continuous batching); past its rows they wait in its line and hear their place. Below Gradio's 40 threads.
PAGE_STREAMS = int(os.environ.get("LAB_PAGE_STREAMS", "24"))
STREAM_INTERVAL_S = 0.05  # at most ~20 page updates a second, however fast tokens come


class SessionCancels:
    """One cancel event per browser session (or API client session), set by Stop."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, key: str) -> threading.Event:
        with self._lock:
            self._events[key] = event = threading.Event()
        return event

    def stop(self, key: str) -> None:
        with self._lock:
            if key in self._events:
                self._events[key].set()

    def finish(self, key: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(key) is event:
                del self._events[key]


def whole_number(*args, **kwargs) -> gr.Number:
    """gr.Number(*args, precision=0, **kwargs) that hands NaN, the infinities and numbers outside its minimum and
    maximum to the handler, whose one rule answers them in a sentence naming the field; Gradio's own check would
    fail with "Value 0 is less than minimum value 1", naming no field, and its rounding with an exception's text.
    (A wrapper, not a subclass: Gradio writes a .pyi file beside every module that defines a component class.)"""
    box = gr.Number(*args, **kwargs)
    rounded = box.preprocess

    def preprocess(payload):
        if isinstance(payload, float) and not math.isfinite(payload):
            return payload
        low = box.minimum is not None and isinstance(payload, (int, float)) and payload < box.minimum
        high = box.maximum is not None and isinstance(payload, (int, float)) and payload > box.maximum
        if (low or high) and not isinstance(payload, bool):
            return gr.Number.round_to_precision(payload, box.precision)
        return rounded(payload)

    box.preprocess = preprocess
    return box


def notice(text: str) -> str:
    """A sentence for a notice beside a form: a warning sign, then the sentence ("" clears the notice)."""
    return f"⚠️ {text}" if text else ""


def errors_inline(outputs: int, slot: int) -> Callable:
    """Decorate a handler (function or generator) of `outputs` outputs so that a LabError becomes `notice(sentence)`
    in output `slot` while the others stay as they are (gr.skip()); nothing is locked, and the sentence stays until
    the next event writes the slot."""
    def answer(e: LabError) -> tuple:
        out = [gr.skip()] * outputs
        out[slot] = notice(str(e))
        return tuple(out) if outputs > 1 else out[0]

    def wrap(fn):
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except LabError as e:
                    yield answer(e)
            return gen

        @functools.wraps(fn)
        def plain(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except LabError as e:
                return answer(e)
        return plain
    return wrap


def form_number(field: str, value, label: str):
    """A number from the page's form by the one rule (`lab.interface.LIMITS[field]`); a LabError in one sentence
    that names it by its `label` on the page."""
    try:
        return check_number(field, value, label)
    except ValueError as e:
        raise LabError(f"{e}.") from None


@contextlib.contextmanager
def in_background(job: Callable[[Callable[[object], None], threading.Event], object], cancels: SessionCancels,
                  key: str, name: str = "lab-background") -> Iterator[Pump]:
    """Run `job(on_progress, cancel)` in a thread; the pump yields each progress item (`pump.events(tick)`), raises
    the job's error and holds its result (`pump.result`). Stop for `key` sets `cancel`; a page that goes away
    (leaving the block early) sets it too, so the job stops after its batch and its run stays resumable."""
    event = cancels.start(key)
    pump = Pump(lambda put: job(put, event), name=name)
    try:
        yield pump
    finally:
        if pump.alive:
            event.set()
        pump.join()
        cancels.finish(key, event)


__all__ = ["STREAM_INTERVAL_S", "SessionCancels", "whole_number", "form_number", "in_background", "notice",
           "errors_inline"]
