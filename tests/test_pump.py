"""lab.pump: items from a worker thread reach a thread or an event loop in order, with the work's error raised
where they are read."""

from __future__ import annotations

import asyncio
import threading

import pytest

from lab.pump import END, Pump


def test_a_thread_reads_the_items_in_order_then_the_error():
    def work(put):
        for i in range(3):
            put(i)
        raise ValueError("the work failed")

    pump = Pump(work)
    got = [pump.get(5) for _ in range(3)]
    with pytest.raises(ValueError, match="the work failed"):
        pump.get(5)
    assert got == [0, 1, 2] and pump.get() is END


def test_an_event_loop_awaits_the_items_of_many_pumps_in_order():
    async def main():
        loop = asyncio.get_running_loop()
        pumps = [Pump(lambda put, k=k: [put((k, i)) for i in range(50)], loop=loop) for k in range(40)]
        out = []
        for p in pumps:
            while (item := await p.aget()) is not END:
                out.append(item)
        return out

    out = asyncio.run(main())
    assert out == [(k, i) for k in range(40) for i in range(50)]


def test_a_closed_loop_does_not_break_the_work():
    done = threading.Event()
    gate = threading.Event()

    def work(put):
        gate.wait(5)
        put("late")  # the loop below has closed by now: the item is dropped, the work goes on
        done.set()

    async def main():
        return Pump(work, loop=asyncio.get_running_loop())

    asyncio.run(main())
    gate.set()
    assert done.wait(5)
