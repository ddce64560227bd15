"""The scheduler (continuous batching) on tiny-random: rows join and leave a running batch, Stop and a consumer that
leaves free a row within a step, each row keeps its own settings and seed, JSON-mode rows run beside free ones, the
queue answers its limit, and greedy (float32) and seeded replies are the same alone or batched. On a CPU the
decoders run without graphs; the `gpu` tests run the same on CUDA with graphs and the compiled step."""

from __future__ import annotations

import json
import threading
import time

import pytest

from lab.engine.scheduler import Busy
from lab.interface import SamplingParams
from tests.conftest import wait_scheduler_idle


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def reply(model, text: str, params: SamplingParams, cancel=None) -> tuple[str, object]:
    out, stats = "", None
    for c in model.stream_chat(chat(text), params, cancel):
        out, stats = out + c.text, c.stats or stats
    return out, stats


def together(model, jobs: list[tuple[str, SamplingParams]], stagger: float = 0.0) -> list[tuple[str, object]]:
    """Each (text, params) as its own stream_chat call in its own thread, started `stagger` s apart."""
    out: list = [None] * len(jobs)

    def go(i: int) -> None:
        out[i] = reply(model, *jobs[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
        time.sleep(stagger)
    for t in threads:
        t.join(120)
    assert all(o is not None for o in out), "a stream did not end"
    return out


@pytest.fixture
def model(tiny):
    assert tiny.scheduler is not None, tiny.engine_off_reason
    tiny.set_scheduling(max_rows=8, queue_limit=64)
    wait_scheduler_idle(tiny)
    yield tiny
    tiny.set_scheduling(max_rows=8, queue_limit=64)


GREEDY = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True)


def test_greedy_rows_are_the_same_alone_and_joining_a_running_batch(model):
    texts = ["Tell me about foxes.", "讲一个故事。", "1, 2, 3,", "Why is the sky blue?"]
    # long enough (~1 s alone on a CPU) that the short rows, started 20 ms apart, join it wherever it is
    long = SamplingParams(temperature=0, max_new_tokens=300, ignore_eos=True)
    alone = [reply(model, t, GREEDY)[0] for t in texts] + [reply(model, "A long one.", long)[0]]
    steps = model.scheduler.steps
    # the long row starts alone (the batch-1 decoder), the others join it one by one and leave before it ends
    got = together(model, [("A long one.", long)] + [(t, GREEDY) for t in texts], stagger=0.02)
    assert [g[0] for g in got[1:]] + [got[0][0]] == alone
    assert model.scheduler.steps - steps < 300 + 4 * 24, "the rows shared decode steps"
    assert all(s.completion_tokens == (300 if i == 0 else 24) for i, (_, s) in enumerate(got))


def test_the_loop_goes_idle_when_the_last_reply_ends(model):
    """The step shipped after the last row ended is taken and the loop stops: a loop left spinning on it held the
    GIL and made every other thread of the process (the page, a plain generate()) crawl."""
    for params in (GREEDY, SamplingParams(max_new_tokens=9, seed=1, ignore_eos=True)):
        reply(model, "Tell me about foxes.", params)
        sched = model.scheduler
        end = time.monotonic() + 5
        while sched.running and time.monotonic() < end:
            time.sleep(0.01)
        assert not sched.running and not sched.pending and sched.active == 0
        cpu = time.process_time()
        time.sleep(0.3)
        assert time.process_time() - cpu < 0.15, "a thread of the scheduler still runs"


def test_a_seeded_sampled_reply_is_the_same_alone_and_batched(model):
    p = SamplingParams(temperature=0.9, top_k=30, top_p=0.95, max_new_tokens=30, seed=7, ignore_eos=True)
    alone = reply(model, "Once upon a time", p)[0]
    others = [("Something else.", SamplingParams(temperature=1.0, max_new_tokens=40, seed=s)) for s in (1, 2, 3)]
    got = together(model, others[:2] + [("Once upon a time", p)] + others[2:], stagger=0.05)
    assert got[2][0] == alone and got[2][1].seed == 7


def test_rows_keep_their_own_settings(model):
    penalised = SamplingParams(temperature=0, max_new_tokens=24, repetition_penalty=1.5, ignore_eos=True)
    short = SamplingParams(temperature=0, max_new_tokens=5)
    wide = SamplingParams(temperature=1.0, top_k=0, top_p=0.9, max_new_tokens=20, seed=3)  # sampled on the host
    alone = [reply(model, "Repeat after me.", p)[0] for p in (penalised, GREEDY)]
    got = together(model, [("Repeat after me.", penalised), ("Repeat after me.", GREEDY), ("hi", short),
                           ("wide", wide)])
    assert [got[0][0], got[1][0]] == alone
    assert got[2][1].completion_tokens <= 5 and got[3][1].completion_tokens <= 20
    assert got[3][0] == reply(model, "wide", wide)[0], "a host-sampled row keeps its seed too"


def test_a_json_mode_row_runs_beside_free_rows(model):
    fmt = SamplingParams(temperature=0.7, max_new_tokens=64, seed=1, response_format={"type": "json_object"})
    got = together(model, [("free", SamplingParams(temperature=0.7, max_new_tokens=64, seed=2)), ("JSON please", fmt),
                           ("free too", SamplingParams(temperature=0, max_new_tokens=40))], stagger=0.05)
    assert isinstance(json.loads(got[1][0]), dict)


def gone_within(sched, rows: int, timeout: float = 10) -> int:
    """Steps the scheduler ran until no more than `rows` rows are left."""
    start, deadline = sched.steps, time.monotonic() + timeout
    while sched.active > rows and time.monotonic() < deadline:
        time.sleep(0.002)
    assert sched.active <= rows, "the row was not freed"
    return sched.steps - start


def beside(model, done: threading.Event) -> threading.Thread:
    """Another reply decoding until `done`."""
    long = SamplingParams(temperature=0.7, max_new_tokens=2000, seed=1, ignore_eos=True)
    t = threading.Thread(target=reply, args=(model, "keep going", long, done))
    t.start()
    return t


def test_stop_frees_its_row_within_a_step_while_the_others_run_on(model):
    sched, cancel, done = model.scheduler, threading.Event(), threading.Event()
    other = beside(model, done)
    try:
        stream = model.stream_chat(chat("stop me"), SamplingParams(temperature=0.7, max_new_tokens=2000,
                                                                   ignore_eos=True), cancel)
        for _ in range(10):
            next(stream)
        cancel.set()
        assert gone_within(sched, 1) <= 2, "the row ended at the next step"
        stats = [c.stats for c in stream if c.stats][0]
        assert stats.finish_reason == "cancelled" and other.is_alive()
    finally:
        done.set()
        other.join(60)


def test_a_consumer_that_leaves_frees_its_row(model):
    sched, done = model.scheduler, threading.Event()
    other = beside(model, done)
    try:
        stream = model.stream_chat(chat("leave me"), SamplingParams(temperature=0.7, max_new_tokens=2000,
                                                                    ignore_eos=True))
        for _ in range(5):
            next(stream)
        stream.close()
        assert gone_within(sched, 1) <= 2, "freed within a step of the consumer leaving"
        assert other.is_alive()
    finally:
        done.set()
        other.join(60)


def test_past_the_rows_requests_wait_in_line_and_past_the_limit_are_refused(model):
    model.set_scheduling(max_rows=2)
    sched = model.scheduler
    long = SamplingParams(temperature=0.7, max_new_tokens=3000, seed=1, ignore_eos=True)  # ended by `cancel`
    cancel = threading.Event()
    running = [threading.Thread(target=reply, args=(model, f"row {i}", long, cancel)) for i in range(2)]
    for t in running:
        t.start()
    deadline = time.monotonic() + 30
    while sched.active < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sched.active == 2, "the two long replies did not start"
    model.set_scheduling(queue_limit=1)  # only now: the two arriving at once may both wait in line a moment
    waits = []
    third = model.stream_chat(chat("third"), SamplingParams(temperature=0, max_new_tokens=4), cancel)
    first = next(third)
    waits.append(first.waiting)
    with pytest.raises(Busy, match=r"busy: its queue is full \(1 waiting"):
        next(model.stream_chat(chat("fourth"), SamplingParams(max_new_tokens=4)))
    cancel.set()
    rest = list(third)
    assert waits == [1] and rest[-1].stats.finish_reason == "cancelled" and rest[-1].stats.queued_s > 0
    for t in running:
        t.join(60)


# ---- the same on CUDA, with graphs and the compiled step ----------------------------------------------------
@pytest.fixture(scope="module")
def cuda_model():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from lab.models import load_model

    m = load_model("tiny-random", quant="fp32", device="cuda")
    assert m.scheduler is not None and m.fast is not None, m.engine_off_reason
    yield m
    m.close()


@pytest.mark.gpu
def test_cuda_greedy_rows_are_the_same_alone_and_batched(cuda_model):
    test_greedy_rows_are_the_same_alone_and_joining_a_running_batch(cuda_model)


@pytest.mark.gpu
def test_cuda_seeded_rows_settings_and_json_beside_others(cuda_model):
    test_a_seeded_sampled_reply_is_the_same_alone_and_batched(cuda_model)
    test_rows_keep_their_own_settings(cuda_model)
    test_a_json_mode_row_runs_beside_free_rows(cuda_model)


@pytest.mark.gpu
def test_cuda_stop_leave_and_queue(cuda_model):
    test_stop_frees_its_row_within_a_step_while_the_others_run_on(cuda_model)
    test_a_consumer_that_leaves_frees_its_row(cuda_model)
    test_past_the_rows_requests_wait_in_line_and_past_the_limit_are_refused(cuda_model)
    cuda_model.set_scheduling(max_rows=8, queue_limit=64)


@pytest.mark.gpu
def test_cuda_long_prompts_join_in_chunks_and_rows_outgrow_the_slots(cuda_model):
    """A newcomer's 1,500-token prompt in 512-token chunks beside a running row, and rows that run past the
    batch's slot count (the shift back)."""
    words = " ".join(["word"] * 1500)
    p = SamplingParams(temperature=0, max_new_tokens=600, ignore_eos=True)
    alone = [reply(cuda_model, t, p)[0] for t in ("short", words)]
    got = together(cuda_model, [("short", p), (words, p)], stagger=0.3)
    assert [g[0] for g in got] == alone


def test_a_long_holder_lets_a_light_holder_in_between_its_pieces_but_not_another_long_one():
    from lab.engine.scheduler import FairLock

    lock, order = FairLock(), []
    lock.acquire()
    assert not lock.offer(), "nobody waits: nothing to give way to"

    def light() -> None:
        with lock.light():
            order.append("light")

    def heavy() -> None:
        with lock:
            order.append("heavy")

    t = threading.Thread(target=heavy)
    t.start()
    while not lock.waiting:
        time.sleep(0.001)
    settled = []
    assert not lock.offer(lambda: settled.append(1)), "a second long holder is not let in half-way"
    assert order == [] and settled == []
    lock.release()
    t.join(5)
    lock.acquire()
    t = threading.Thread(target=light)
    t.start()
    while not lock.waiting:
        time.sleep(0.001)
    assert lock.offer(lambda: settled.append(1))
    assert order == ["heavy", "light"] and settled == [1], "the light holder ran in between, after settling"
    lock.release()
    t.join(5)


def test_a_chat_reply_keeps_decoding_inside_one_long_scoring_batch(model, monkeypatch):
    """An evaluation's scoring batch gives way between its layers to the chat's steps: the reply does not wait for
    the whole batch (on a GPU a big MMLU batch is a second). The batch's scores are those it gives alone."""
    from lab.engine import prefix

    start = "The following are multiple choice questions about foxes.\n\n" + "Q: A fox is? A. red B. blue\n" * 6
    prompts = [f"{start}\nQuestion {i}: {'why ' * (40 + i)}\nAnswer:" for i in range(48)]
    # six batches of 8, each with a layer boundary where a waiting chat step can run (on a loaded machine the chat's
    # thread may not be back in line in time for one of them)
    alone = model.score_choices(prompts, [" A", " B", " C", " D"], batch_size=8)

    seen, real = [], prefix.suffix_forward

    def timed(*args, **kwargs):
        before = model.scheduler.steps
        out = real(*args, **kwargs)
        seen.append(model.scheduler.steps - before)
        return out

    monkeypatch.setattr(prefix, "suffix_forward", timed)
    cancel, first = threading.Event(), threading.Event()
    params = SamplingParams(temperature=0, max_new_tokens=4000, ignore_eos=True)

    def chatting() -> None:
        for _ in model.stream_chat(chat("Tell me a long story."), params, cancel):
            first.set()

    t = threading.Thread(target=chatting)
    t.start()
    try:
        assert first.wait(60), "the reply did not start"
        during = model.score_choices(prompts, [" A", " B", " C", " D"], batch_size=8)
    finally:
        cancel.set()
        t.join(60)
    assert seen and max(seen) >= 1, f"no chat step ran inside a scoring batch (steps per batch: {seen})"
    assert during == alone, "giving way changed the scores"
