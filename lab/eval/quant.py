"""What quantization costs, in one report: the same model in several variants (bf16, 8-bit, 4-bit, ...), run on the
same items with the same seeds, with accuracy, paired differences from the reference, speed and memory.

    python -m lab.eval quant --model Qwen2.5-7B-Instruct --variants bf16,8bit,4bit --benchmarks mmlu:mini,humaneval
    python -m lab.eval quant --resume REPORT_ID                 # a killed report goes on where it stopped

    report_id = run_report(store, QuantRequest("tiny-random", ["fp32", "bf16"], ["mmlu:mini"], limit=20),
                           loader=my_loader)
    report = load_report(store, report_id)          # JSON-able: the JSON export
    render_markdown(report), render_html(report)    # the other two exports (lab/eval/quant_render.py)

Each variant is loaded in turn (the previous one closed and its memory freed first), measured on the page's chat
path (`stream_chat` at batch 1: time to first token and decode tokens/s, the page's sampling defaults), and runs
every benchmark as an ordinary saved run of the evaluation engine; the report links them (lab.db's quant_reports,
quant_variants, quant_runs). A run's items are a pure function of its request, and every variant gets the same
request, so they answer the same items; a resumed report resumes its runs, batch for batch.

`loader(request, variant) -> ChatModel` is the caller's: this layer talks to models through the interface only
(tests/test_layering.py), so the CLI passes one over lab.models.load_model and a page would pass one over its
ModelManager. A variant that cannot load, or fails while it runs, is one sentence in its row; the others go on.
The statistics are lab/eval/stats.py's.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Collection, Sequence

from lab import runtime
from lab.errors import LabError
from lab.eval import stats
from lab.eval.kinds import kind_of
from lab.eval.plan import DEFAULT_SEED, EvalRequest, Progress
from lab.eval.quant_render import render_html, render_markdown, render_text
from lab.eval.runner import Runner
from lab.eval.spec import load_spec
from lab.eval.store import ReportStore, RunStore, Sample
from lab.interface import SamplingParams

__all__ = ["QuantProgress", "QuantRequest", "Variant", "check", "end_report", "list_reports", "load_kwargs",
           "load_report", "parse_benchmark", "parse_variant", "render_html", "render_markdown", "render_text",
           "run_report", "run_variants", "start_report"]

FORMAT = "qwen-lab.quant-report/1"
PLAIN = ("bf16", "fp16", "fp32", "8bit", "4bit")
VARIANT_HELP = "bf16, fp16, fp32, 8bit (LLM.int8), 4bit (NF4, double quant), 4bit-nodq (NF4 alone), gguf=PATH"


@dataclass
class QuantRequest:
    """What a report runs; stored with it (the run-history folder is not part of it)."""

    model: str
    variants: list[str]  # the first is the reference
    benchmarks: list[str]  # "mmlu", "mmlu:mini" (a named subset), "humaneval"
    limit: int | None = None  # per benchmark, a seeded sample (as `python -m lab.eval --limit`)
    shots: int | None = None  # multiple choice; None: each spec's default
    seed: int = DEFAULT_SEED
    data_dir: str | None = None
    device: str = "auto"
    context: int | None = None
    batch_size: int | None = None
    speed_prompt_tokens: int | None = None  # the speed reply's prompt (chat template included); None: 512 on CUDA,
    # as the table of record measures, 128 elsewhere
    speed_new_tokens: int | None = None  # None: 128 on CUDA, 16 elsewhere (a CPU decodes slowly)
    resamples: int = stats.RESAMPLES

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantRequest":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Variant:
    text: str  # as asked for
    quant: str  # what the loader's quant is: bf16 fp16 fp32 8bit 4bit, or "gguf"
    double_quant: bool = True
    gguf: str | None = None  # the GGUF file, for quant "gguf"


@dataclass
class QuantProgress:
    report_id: str
    variant: str
    variant_index: int
    n_variants: int
    benchmark: str
    done: int
    total: int
    accuracy: float | None
    eta_s: float | None  # the whole report's remaining time, from the rates seen so far (None: not yet known)


Loader = Callable[[QuantRequest, Variant], object]


def parse_variant(text: str) -> Variant:
    t = text.strip()
    if t in PLAIN:
        return Variant(t, t)
    if t == "4bit-nodq":
        return Variant(t, "4bit", double_quant=False)
    if t.startswith("gguf="):
        path = t[len("gguf="):].strip()
        if not path:
            raise LabError("The variant gguf= needs the path of a GGUF file after the '='.")
        return Variant(t, "gguf", gguf=path)
    raise LabError(f"Unknown variant '{t}'; variants are {VARIANT_HELP}.")


def load_kwargs(req: QuantRequest, variant: Variant, accepts: Collection[str]) -> dict:
    """The keyword arguments of lab.models.load_model for one variant, given the parameters it `accepts` (its
    signature): the CLI's loader and a page's use the same. A GGUF file goes as `gguf_file` (a local file, no
    repository) once the loader takes one; until then, and for a file that is not there, one sentence."""
    kw = dict(name=req.model, quant=variant.quant, device=req.device, double_quant=variant.double_quant,
              context=req.context)
    if variant.gguf is None:
        return kw
    path = Path(variant.gguf).expanduser()
    if not path.is_file():
        raise LabError(f"There is no GGUF file at {variant.gguf}, so {variant.text} was not run.")
    if "gguf_file" not in accepts:
        raise LabError(f"This Qwen Lab cannot load GGUF files yet (lab.models has no GGUF loader), so {variant.text} "
                       "was not run.")
    # the file's own weights, dequantized into the default dtype (fp32 on a CPU, bf16 on CUDA)
    return {**kw, "name": None, "gguf_file": str(path.resolve()), "quant": "auto"}


def parse_benchmark(text: str) -> tuple[str, str | None]:
    name, _, subset = text.strip().partition(":")
    return name, (subset or None)


def eval_request(req: QuantRequest, bench: str) -> EvalRequest:
    """The one request every variant runs `bench` with: same items, same seeds."""
    name, subset = parse_benchmark(bench)
    takes_shots = kind_of(load_spec(name)).TAKES_SHOTS
    return EvalRequest(benchmark=name, subset=subset, limit=req.limit, shots=req.shots if takes_shots else None,
                       seed=req.seed, batch_size=req.batch_size, data_dir=req.data_dir, samples_per_task=1)


def check(req: QuantRequest, runner: Runner) -> dict:
    """Every flag checked and every benchmark planned (missing data is found here), before a model loads.
    Returns benchmark -> item count."""
    if not req.model:
        raise LabError("Name the model the report quantizes with --model.")
    variants = [parse_variant(v) for v in req.variants]
    if len(variants) < 2:
        raise LabError(f"A quantization report compares at least two variants ({VARIANT_HELP}); got "
                       f"{len(variants)}.")
    if len({v.text for v in variants}) < len(variants):
        raise LabError("Each variant may be named once; the list has one twice.")
    if not req.benchmarks:
        raise LabError("Name at least one benchmark with --benchmarks, e.g. mmlu:mini,humaneval.")
    if len(set(req.benchmarks)) < len(req.benchmarks):
        raise LabError("Each benchmark may be named once; the list has one twice.")
    return {b: len(runner.plan(eval_request(req, b)).items) for b in req.benchmarks}


# ---- running --------------------------------------------------------------------------------------
def run_report(store: RunStore, req: QuantRequest | None, on_progress: Callable[[QuantProgress], None] | None = None,
               cancel: threading.Event | None = None, resume: str | None = None, *,
               loader: Loader | None = None) -> str:
    """Run (or, with `resume`, finish) a report; returns its id. `loader` loads one variant (module docstring).
    The three steps are public so that several processes can share one report (lab/eval/quant_ranks.py)."""
    t_start = time.perf_counter()
    begun = start_report(store, req, resume)
    if begun is None:  # a finished report
        return resume
    report_id, req, counts = begun
    if loader is None:
        raise LabError("run_report needs a loader(request, variant) that loads the model in a variant.")
    status, timing = run_variants(store, Runner(store), report_id, req, counts, loader, on_progress, cancel)
    end_report(store, report_id, status, timing, time.perf_counter() - t_start, bool(resume))
    return report_id


def start_report(store: RunStore, req: QuantRequest | None,
                 resume: str | None) -> tuple[str, QuantRequest, dict] | None:
    """Check the request and create the report, or check a report to resume and mark it running: (report id, its
    request, benchmark -> item count); None for a report with nothing left to run."""
    reports, runner = ReportStore(store.db), Runner(store)
    if resume:
        r = reports.report(resume)
        if r["state"] == "running":
            raise LabError(f"Report {resume} is still running (process {r['owner']}); let it finish, or stop it.")
        req, report_id = QuantRequest.from_dict(r["request"]), resume
        if r["status"] == "finished" and all(v["status"] != "pending" for v in reports.variants(report_id)):
            return None
        counts = check(req, runner)
        reports.set_report_status(report_id, "running")
    else:
        counts = check(req, runner)
        report_id = reports.create_report(req.to_dict(), req.variants)
    return report_id, req, counts


def run_variants(store: RunStore, runner: Runner, report_id: str, req: QuantRequest, counts: dict, loader: Loader,
                 on_progress=None, cancel: threading.Event | None = None,
                 only: Collection[int] | None = None) -> tuple[str, dict]:
    """Load, measure and run each variant not done yet (`only`: those at these positions), in turn, through
    `runner`; returns the status ("finished" or "cancelled") and the timing of this process's part."""
    cancel = cancel or threading.Event()
    reports = ReportStore(store.db)
    timing = {"load_s": 0.0, "measure_s": 0.0, "runs_s": 0.0}
    clock = _Eta(req, counts, reports.variants(report_id), only)
    status = "finished"
    try:
        for index, text in enumerate(req.variants):
            if clock.done(text) or (only is not None and index not in only):
                continue
            if cancel.is_set():
                status = "cancelled"
                break
            status = _run_variant(store, reports, runner, report_id, req, index, text, loader, timing, clock,
                                  on_progress, cancel)
            if status != "finished":
                break
            clock.finish(text)  # done, or failed: either way nothing of it is left to run
    except KeyboardInterrupt:
        reports.set_report_status(report_id, "cancelled")
        raise
    except BaseException:
        reports.set_report_status(report_id, "failed")
        raise
    return status, timing


def end_report(store: RunStore, report_id: str, status: str, timing: dict, wall_s: float, resumed: bool) -> None:
    """The report's status, and its timing with what it cost beyond its runs."""
    timing = {**timing, "wall_s": wall_s}
    timing["overhead_s"] = timing["wall_s"] - timing["runs_s"]
    timing["overhead_pct"] = 100 * timing["overhead_s"] / timing["runs_s"] if timing["runs_s"] else None
    # what the report adds beyond work separate runs would need too (the runs, and loading each variant once)
    timing["added_s"] = timing["overhead_s"] - timing["load_s"]
    timing["added_pct"] = 100 * timing["added_s"] / (timing["runs_s"] + timing["load_s"]) if timing["runs_s"] else None
    timing["resumed"] = resumed
    ReportStore(store.db).set_report_status(report_id, status, {k: round(v, 3) if isinstance(v, float) else v
                                                                for k, v in timing.items()})


def _run_variant(store, reports: ReportStore, runner: Runner, report_id: str, req: QuantRequest, index: int,
                 text: str, loader: Loader, timing: dict, clock: "_Eta", on_progress, cancel) -> str:
    """Load, measure and run one variant. Returns "finished" or "cancelled"; a failure is the variant's row."""
    t = time.perf_counter()  # the previous variant's memory went back when it was closed (the `finally` below)
    try:
        model = loader(req, parse_variant(text))
    except LabError as e:
        timing["load_s"] += time.perf_counter() - t
        reports.set_variant(report_id, text, status="failed", error=str(e))
        return "finished"
    except Exception as e:  # anything else a loader raises is still this variant's row, not the report's end
        timing["load_s"] += time.perf_counter() - t
        reports.set_variant(report_id, text, status="failed", error=_sentence(text, "could not be loaded", e))
        return "finished"
    load_s = time.perf_counter() - t
    timing["load_s"] += load_s
    try:
        t = time.perf_counter()
        measured = {"load_s": load_s, "weight_bytes": model.info.weight_bytes, **measure_speed(model, req)}
        timing["measure_s"] += time.perf_counter() - t
        reports.set_variant(report_id, text, model=model.info.to_dict(), measured=measured)
        cuda = model.info.device.startswith("cuda")
        if cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        links = reports.report_runs(report_id).get(text, {})
        for bench in req.benchmarks:
            def progress(p: Progress, bench=bench) -> None:
                if links.get(bench) != p.run_id:  # the run exists now: link it, so a kill leaves it resumable
                    links[bench] = p.run_id
                    reports.link_run(report_id, text, bench, p.run_id)
                clock.tick(text, bench, p)
                if on_progress:
                    on_progress(QuantProgress(report_id, text, index, len(req.variants), bench, p.done, p.total,
                                              p.accuracy, clock.eta()))

            t = time.perf_counter()
            if bench in links:
                result = runner.resume(model, links[bench], on_progress=progress, cancel=cancel)
            else:
                result = runner.run(model, eval_request(req, bench), on_progress=progress, cancel=cancel)
            timing["runs_s"] += time.perf_counter() - t
            if result.status != "finished":
                return "cancelled"
        measured["peak_bytes"] = int(torch.cuda.max_memory_allocated()) if cuda else None
        reports.set_variant(report_id, text, status="done", measured=measured)
        return "finished"
    except LabError as e:  # out of memory while evaluating, a server gone, ...: this row says so
        reports.set_variant(report_id, text, status="failed", error=str(e))
        return "finished"
    finally:
        model.close()
        runtime.release_gpu_memory()


def measure_speed(model, req: QuantRequest) -> dict:
    """Time to first token and decode tokens/s of one reply at batch 1 on the page's path (`stream_chat`, the
    page's sampling defaults, end of turn ignored so every variant decodes the same number of tokens)."""
    cuda = model.info.device.startswith("cuda")
    new = req.speed_new_tokens or (128 if cuda else 16)
    budget = max(16, min(req.speed_prompt_tokens or (512 if cuda else 128), model.info.context_length - new - 16))
    messages = _prompt_of_length(model, budget)
    try:
        _reply_stats(model, messages, SamplingParams(max_new_tokens=2, seed=0, ignore_eos=True))  # warm-up
        s = _reply_stats(model, messages, SamplingParams(max_new_tokens=new, seed=0, ignore_eos=True))
    except LabError as e:
        return {"speed_error": str(e)}
    return {"decode_tok_s": s.decode_tokens_per_s, "ttft_s": s.ttft_s, "speed_prompt_tokens": s.prompt_tokens,
            "speed_new_tokens": s.completion_tokens}


def _prompt_of_length(model, n_tokens: int) -> list[dict]:
    """Chat messages whose rendered prompt is about n_tokens long (exactly, where the tokenizer allows)."""
    words = n_tokens
    messages = []
    for _ in range(8):
        messages = [{"role": "user", "content": "Summarise:" + " the" * max(1, words)}]
        got = model.count_chat_tokens(messages)
        if got == n_tokens:
            break
        words += n_tokens - got
    return messages


def _reply_stats(model, messages, params):
    return next(c.stats for c in model.stream_chat(messages, params) if c.stats)


def _sentence(variant: str, what: str, e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0].rstrip(".")
    return f"{variant} {what} ({type(e).__name__}{': ' + first[:200] if first else ''})."


class _Eta:
    """The report's remaining time: each benchmark's seconds per item, from this process's runs, times the items
    left (this run's rest, then every benchmark of the variants still to come)."""

    def __init__(self, req: QuantRequest, counts: dict, variants: list[dict],
                 only: Collection[int] | None = None) -> None:
        self.req, self.counts = req, counts
        self.finished = {v["variant"] for v in variants if v["status"] == "done"}
        if only is not None:  # another process runs the others: not this one's time left
            self.finished |= {v for i, v in enumerate(req.variants) if i not in only}
        self.rate: dict[str, tuple[float, int]] = {}  # bench -> (seconds, items) seen
        self.where: tuple[str, str, int, float] | None = None  # variant, bench, done at start, start time
        self.left: dict[tuple[str, str], int] = {}

    def done(self, variant: str) -> bool:
        return variant in self.finished

    def finish(self, variant: str) -> None:
        self.finished.add(variant)

    def tick(self, variant: str, bench: str, p: Progress) -> None:
        now = time.monotonic()
        if self.where is None or self.where[:2] != (variant, bench):
            self.where = (variant, bench, p.done, now)
        _, _, start_done, start = self.where
        if p.done > start_done:
            self.rate[bench] = (now - start, p.done - start_done)
        self.left[(variant, bench)] = p.total - p.done

    def eta(self) -> float | None:
        total = 0.0
        for v in self.req.variants:
            if v in self.finished:
                continue
            for b in self.req.benchmarks:
                if b not in self.rate:
                    return None
                seconds, items = self.rate[b]
                total += seconds / items * self.left.get((v, b), self.counts[b])
        return total


# ---- the report -----------------------------------------------------------------------------------
def list_reports(store: RunStore) -> list[dict]:
    """Every report, newest first: id, status, model, variants, benchmarks, created_at."""
    out = []
    for r in ReportStore(store.db).reports():
        q = r["request"]
        out.append({"id": r["id"], "status": r["state"], "model": q.get("model"), "variants": q.get("variants"),
                    "benchmarks": q.get("benchmarks"), "created_at": r["created_at"], "ended_at": r["ended_at"]})
    return out


def load_report(store: RunStore, report_id: str) -> dict:
    """The whole report as a JSON-able dict (the JSON export), computed from the runs it links."""
    reports = ReportStore(store.db)
    r = reports.report(report_id)
    req = QuantRequest.from_dict(r["request"])
    rows = reports.variants(report_id)
    links = reports.report_runs(report_id)
    samples = {(v, b): store.samples(run_id) for v, by in links.items() for b, run_id in by.items()}
    ran = [v["variant"] for v in rows if v["status"] == "done"]
    ref = ran[0] if ran else None
    note = None
    if ref is None:
        note = "No variant ran to the end, so there is no reference to compare with."
    elif ref != req.variants[0]:
        note = f"The first variant, {req.variants[0]}, did not run, so {ref} is the reference."
    variants, flips, versions = [], [], {}
    for vi, v in enumerate(rows):
        results = {}
        for bi, bench in enumerate(req.benchmarks):
            mine = samples.get((v["variant"], bench))
            if mine is None:
                continue
            run = store.get(links[v["variant"]][bench])
            theirs = samples.get((ref, bench)) if ref and v["variant"] != ref else None
            res, flipped = _compare(bench, mine, theirs, run.params.get("groups", {}), [req.seed, bi, vi],
                                    req.resamples)
            res["run_id"], res["run_status"] = run.id, run.state
            versions = versions or run.versions
            results[bench] = res
            flips += [{"benchmark": bench, "variant": v["variant"], **f} for f in flipped]
        variants.append({"variant": v["variant"], "position": v["position"], "status": v["status"],
                         "error": v["error"], "reference": v["variant"] == ref, "model": v["model"],
                         "measured": v["measured"], "results": results})
    return {
        "format": FORMAT, "id": report_id, "status": r["state"], "created_at": r["created_at"],
        "ended_at": r["ended_at"], "request": req.to_dict(), "reference": ref, "reference_note": note,
        "benchmarks": [_bench_meta(b) for b in req.benchmarks], "variants": variants, "flips": flips,
        "timing": r["timing"], "versions": versions,
        "notes": {"interval": stats.INTERVAL_NOTE, "agreement": AGREEMENT_NOTE, "score": SCORE_NOTE},
    }


AGREEMENT_NOTE = ("Agreement is the share of items answered the same as the reference: the same letter (multiple "
                  "choice) or the same program (code), right or wrong.")
SCORE_NOTE = ("Each item scores 1 or 0: multiple choice, the right letter; HumanEval, pass@1 of the task's one greedy "
              "sample, as the sandbox judged it.")


def _bench_meta(bench: str) -> dict:
    name, subset = parse_benchmark(bench)
    spec = load_spec(name)
    return {"name": bench, "benchmark": name, "subset": subset, "title": spec.title,
            "metric": "pass@1" if spec.kind == "code" else "accuracy", "kind": spec.kind}


def _compare(bench: str, mine: Sequence[Sample], ref: Sequence[Sample] | None, groups: dict, seed: list[int],
             resamples: int) -> tuple[dict, list[dict]]:
    """One variant's result on one benchmark; with the reference's samples, the paired comparison and flips."""
    correct = sum(s.correct for s in mine)
    res = {"n": len(mine), "correct": correct, "accuracy": correct / len(mine) if mine else None,
           "ci": _list(stats.wilson(correct, len(mine)))}
    if ref is None:
        return res, []
    by_key = {s.key: s for s in mine}
    pairs = [(r, by_key[r.key]) for r in ref if r.key in by_key]  # in the reference's item order

    def cmp(subset: list) -> dict:
        return stats.paired([r.correct for r, _ in subset], [m.correct for _, m in subset], seed, resamples)

    res.update(cmp(pairs))
    res["agreement"] = sum(r.extracted == m.extracted for r, m in pairs) / len(pairs) if pairs else None
    by_subject: dict[str, list] = {}
    for pair in pairs:
        by_subject.setdefault(pair[0].subject or "", []).append(pair)
    if groups:  # multiple choice: categories, and each subject
        res["groups"] = {g: cmp([p for s in subjects for p in by_subject.get(s, [])]) for g, subjects in groups.items()
                         if any(s in by_subject for s in subjects)}
        res["subjects"] = {s: cmp(ps) for s, ps in sorted(by_subject.items())}
    flips = [{"key": r.key, "subject": r.subject, "gold": r.gold, "prompt": r.prompt,
              "reference_answer": r.extracted, "reference_output": r.output, "reference_correct": r.correct,
              "answer": m.extracted, "output": m.output, "correct": m.correct}
             for r, m in pairs if r.correct != m.correct]
    return res, flips


def _list(x) -> list | None:
    return None if x is None else list(x)
