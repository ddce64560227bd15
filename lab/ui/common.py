"""What the tabs share: Stop per browser session, how often the page updates, a form's numbers checked by the one
rule, and long work (an evaluation, variants on a benchmark) run in the background while the event that started it
reports its progress."""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Callable, Iterator

import gradio as gr

from lab.errors import LabError
from lab.interface import check_number
from lab.pump import Pump

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
    """gr.Number(*args, precision=0, **kwargs) that hands NaN and the infinities to the handler, whose one rule
    answers them in a sentence; Gradio's own rounding would fail on them with its exception's text. (A wrapper,
    not a subclass: Gradio writes a .pyi file beside every module that defines a component class.)"""
    box = gr.Number(*args, **kwargs)
    rounded = box.preprocess
    box.preprocess = lambda payload: (payload if isinstance(payload, float) and not math.isfinite(payload)
                                      else rounded(payload))
    return box


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


__all__ = ["STREAM_INTERVAL_S", "SessionCancels", "whole_number", "form_number", "in_background"]
