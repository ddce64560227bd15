"""A run's scores as Hugging Face model-card metadata (`model-index`), ready to paste or to push.

    python -m lab.eval export RUN_ID --model-index                     # also writes RUN_ID.model-index.yaml
    python -m lab.eval export RUN_ID --push alice/my-model             # ... and merges it into that model's card
    python -m lab.eval export RUN_ID --model-index --model-name Qwen2.5-7B-Instruct --source-url URL

The block is built with huggingface_hub's own `EvalResult` and `ModelCardData`, so it is what the Hub reads:
one result per metric, with the task (multiple choice, or code generation), the dataset as the spec names
it on the Hub (`type` the dataset id, `config` when the spec has a single one, `split` the one scored),
and the metric: `accuracy` for a multiple-choice run (micro: correct / questions), `pass@k` for a code
run (each k the run's samples allow). Values are fractions, as `evaluate` and the sandboxed_code_eval
metric return them (0.6523, not 65.23). The metric's `name` says how it was measured (mode, shots,
quantization, and the number of items when the run did not cover the whole split), its `args` say the
same as data; `source` is written when --source-url gives a link (the Hub wants a URL with a name).

--push merges the results into the model repository's card through `metadata_update` (a result for the
same task, dataset and metric is replaced), with the token of HF_TOKEN or `hf auth login`. Offline
(HF_HUB_OFFLINE), without a token, or when the Hub cannot be reached, it ends in one sentence, status 2.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from lab.errors import LabError
from lab.eval.kinds import kind_of
from lab.eval.spec import Spec, load_spec
from lab.eval.store import Run

TASKS = {"choice": ("multiple-choice", "Multiple choice"), "code": ("text-generation", "Code generation")}
DIGITS = 4  # a fraction to four places: a hundredth of a percent


def eval_results(run: Run, spec: Spec, source_url: str | None = None) -> list:
    """huggingface_hub EvalResults for a finished run: one per metric (module docstring)."""
    from huggingface_hub import EvalResult

    if run.state != "finished" or not run.summary:
        raise LabError(f"Run {run.id} is {run.state}; only a finished run's scores go on a model card "
                       f"(finish it with --resume {run.id}).")
    overall = run.summary.get("overall", {})
    names = ["accuracy"] if spec.kind == "choice" else sorted((m for m in overall if m.startswith("pass@")),
                                                              key=lambda m: int(m[5:]))
    task_type, task_name = TASKS[spec.kind]
    config = spec.hub.config if spec.hub.config and "{" not in spec.hub.config else None
    how, args = _how(run, spec)
    results = []
    for name in names:
        if overall.get(name) is None:
            raise LabError(f"Run {run.id} has no {name} in its summary, so there is no score to put on a card.")
        results.append(EvalResult(
            task_type=task_type, task_name=task_name, dataset_type=spec.hub.path, dataset_name=spec.title,
            dataset_config=config, dataset_split=spec.hub.split_name(spec.split), metric_type=name,
            metric_value=round(float(overall[name]), DIGITS), metric_name=f"{name} ({how})", metric_args=args,
            source_name=f"Qwen Lab run {run.id}" if source_url else None, source_url=source_url))
    return results


def _how(run: Run, spec: Spec) -> tuple[str, dict]:
    """How the run measured, in words for the metric's name and as data for its args."""
    request = run.params.get("request", {})
    args = {"mode": run.mode}
    if run.shots is not None and spec.kind == "choice":
        args["shots"] = run.shots
    if run.quant:
        args["quant"] = run.quant
    if spec.kind == "code" and request.get("samples_per_task", 1) > 1:
        args["samples_per_task"] = request["samples_per_task"]
        args["temperature"] = request.get("temperature")
    words = [f"{run.shots}-shot {run.mode}" if "shots" in args else run.mode] + ([run.quant] if run.quant else [])
    if run.subset or request.get("limit") or request.get("subjects"):
        args["items"] = run.n_total
        if run.subset:
            args["subset"] = run.subset
        words.append(f"{run.n_total} {kind_of(spec).UNIT}" + (f", subset {run.subset}" if run.subset else ""))
    return ", ".join(words), args


def model_name_of(run: Run, given: str | None = None) -> str:
    if given:
        return given
    if run.mode == "score":
        raise LabError(f"Run {run.id} scored a file, so it names no model; add --model-name NAME.")
    return run.params.get("model", {}).get("name") or run.model


def card_data(run: Run, spec: Spec | None = None, model_name: str | None = None, source_url: str | None = None):
    """The run's results as huggingface_hub ModelCardData (only `model-index` is set)."""
    from huggingface_hub import ModelCardData

    spec = spec or load_spec(run.benchmark)
    return ModelCardData(model_name=model_name_of(run, model_name),
                         eval_results=eval_results(run, spec, source_url))


def model_index_yaml(data) -> str:
    """The `model-index:` block as YAML, to paste into a card's front matter."""
    return data.to_yaml() + "\n"


def push(repo_id: str, data) -> str:
    """Merge `data`'s model-index into the card of the model repository `repo_id`; the commit's URL."""
    import huggingface_hub
    from huggingface_hub import constants

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", repo_id or ""):
        raise LabError(f"--push takes a model repository as OWNER/NAME, such as alice/my-model, not {repo_id!r}.")
    if constants.is_offline_mode():
        raise LabError(f"HF_HUB_OFFLINE is set, so nothing can be pushed to {repo_id}; paste the model-index file "
                       "into its card, or unset HF_HUB_OFFLINE and push again.")
    token = huggingface_hub.get_token()
    if not token:
        raise LabError(f"No Hugging Face token was found to push to {repo_id}; set HF_TOKEN to a token with write "
                       "access, or run `hf auth login`, then push again.")
    try:
        return str(huggingface_hub.metadata_update(repo_id, data.to_dict(), overwrite=True,
                                                   commit_message="Evaluation results from Qwen Lab"))
    except Exception as e:  # HTTP errors, no network: one sentence, never the token
        status = getattr(getattr(e, "response", None), "status_code", None)
        first = ((str(e).strip().splitlines() or [""])[0] or type(e).__name__).replace(token, "***")[:200]
        raise LabError(f"Updating the card of {repo_id} failed ({f'HTTP {status}: ' if status else ''}{first}); "
                       "check the network, the token's write access and the repository name, then try again.") \
            from None


# ---- the export command's part -------------------------------------------------------------------------
def add_flags(export: argparse.ArgumentParser) -> None:
    export.add_argument("--model-index", action="store_true",
                        help="also write RUN_ID.model-index.yaml: the scores as model-card metadata")
    export.add_argument("--push", metavar="OWNER/NAME",
                        help="merge that model-index into this model repository's card on the Hub (HF_TOKEN)")
    export.add_argument("--model-name", help="the model's name in the model-index (default: the run's model)")
    export.add_argument("--source-url", help="a link to where the run is shown, written as each result's source")


def export(run: Run, out: Path, args: argparse.Namespace) -> Path | None:
    """What --model-index and --push do for `python -m lab.eval export`; None when neither was asked for."""
    if not (args.model_index or args.push):
        return None
    data = card_data(run, model_name=args.model_name, source_url=args.source_url)
    path = Path(out) / f"{run.id}.model-index.yaml"
    text = model_index_yaml(data)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}:\n\n{text}")
    if args.push:
        print(f"updated the card of {args.push}: {push(args.push, data)}")
    return path
