"""What the tabs share: Stop per browser session, how often the page updates, and long work (an evaluation,
variants on a benchmark) run in the background while the event that started it reports its progress."""

from __future__ import annotations

import threading
from typing import Callable, Iterator

from lab.pump import TICK, Pump

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


def in_background(job: Callable[[Callable[[object], None], threading.Event], object], cancels: SessionCancels,
                  key: str, tick: float | None = None, name: str = "lab-background") -> Iterator:
    """Run `job(on_progress, cancel)` in a thread; yield each progress item (and TICK every `tick` seconds
    without one), then return the job's result (`yield from` gives it) or raise its error. Stop for `key`
    sets `cancel`; a page that goes away (the generator closed) sets it too, so the job stops after its
    batch and its run stays resumable."""
    event = cancels.start(key)
    pump = Pump(lambda put: job(put, event), name=name)
    try:
        yield from pump.events(tick)
    finally:
        if pump.alive:
            event.set()
        pump.join()
        cancels.finish(key, event)
    return pump.result


__all__ = ["STREAM_INTERVAL_S", "SessionCancels", "TICK", "in_background"]
