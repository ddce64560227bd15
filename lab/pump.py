"""The one hand-off from a worker thread to whoever consumes its results, in order.

    pump = Pump(lambda put: model_generate(on_token=put))    # the work runs in a thread of its own
    for item in pump: ...                                    # items as they come; the work's error, raised here
    for item in pump.events(tick=1.0): ...                   # also TICK when a second passes without news
    item = pump.get(timeout=0.5)                             # an item, TICK, or END
    pump = Pump(work, loop=asyncio.get_running_loop())      # for a coroutine: item = await pump.aget()

The work gets `put` and calls it once per item; what it returns is `pump.result`. The page's streaming
replies, Compare's rows, a remote model's parallel requests, lab.serve's responses and the Evaluate tab's
progress all go through this class. `executor` runs the work on a long-lived thread instead of a new one
(CUDA libraries keep their handles per thread). With `loop`, items go straight to that event loop (no thread
waits on a queue per stream: a server's 32 streams would otherwise hold 32 of asyncio's ~20 worker threads).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Executor
from typing import Callable, Iterator

TICK = object()  # no item arrived within the tick or timeout
END = object()  # the work is over (its error, if any, is raised instead)
_DONE = object()


class Pump:
    def __init__(self, work: Callable[[Callable[[object], None]], object], name: str = "lab-pump",
                 executor: Executor | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._q: queue.Queue = queue.Queue()
        self._aq: asyncio.Queue | None = None
        self._put = self._q.put
        if loop is not None:
            self._aq = asyncio.Queue()

            def put(item) -> None:
                try:
                    loop.call_soon_threadsafe(self._aq.put_nowait, item)
                except RuntimeError:  # the loop is closed: nobody is left to read
                    pass

            self._put = put
        self.result = None
        self._error: BaseException | None = None
        self._ended = False
        if executor is not None:
            self._future = executor.submit(self._run, work)
            self._thread = None
        else:
            self._future = None
            self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
            self._thread.start()

    def _run(self, work) -> None:
        try:
            self.result = work(self._put)
        except BaseException as e:  # raised again in the consumer's thread
            self._error = e
        finally:
            self._put(_DONE)

    def get(self, timeout: float | None = None):
        """The next item, TICK when `timeout` seconds pass first, or END once the work is over."""
        assert self._aq is None, "a pump made with a loop is read with aget()"
        if self._ended:
            return END
        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty:
            return TICK
        return self._unwrap(item)

    async def aget(self):
        """In the loop given: the next item, or END once the work is over."""
        if self._ended:
            return END
        return self._unwrap(await self._aq.get())

    def _unwrap(self, item):
        if item is _DONE:
            self._ended = True
            if self._error is not None:
                raise self._error
            return END
        return item

    def events(self, tick: float | None = None) -> Iterator:
        while (item := self.get(tick)) is not END:
            yield item

    def __iter__(self) -> Iterator:
        return self.events()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the work's thread to end; whether it did within `timeout`."""
        if self._future is not None:
            try:
                self._future.result(timeout=timeout)
            except Exception:
                return self._future.done()
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return not self._future.done() if self._future is not None else self._thread.is_alive()
