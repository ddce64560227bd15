"""lm-evaluation-harness's own loglikelihood requests for MMLU, C-Eval and CMMLU, over the local data.

lm-eval builds every request itself here: its TaskManager reads its task YAMLs (the include chains, each
subject's `description`, `doc_to_text`, `fewshot_config`, the delimiters) and builds the tasks as
`simple_evaluate` does (`TaskManager.load`, or `get_task_dict` where an older lm-eval lacks it);
`num_fewshot` is set the way the evaluator sets it, and `build_all_requests` calls its `fewshot_context`
(sampler, shots, description) and `construct_requests` (the " A" continuations).
Two things are replaced, neither of which touches a prompt:
- `ConfigurableTask.download`: lm-eval would fetch `cais/mmlu`, `ceval/ceval-exam` or `haonan-li/cmmlu` from
  the Hub; instead the docs are the local CSVs, read here with the csv module (independently of
  lab/eval/data.py) into the Hub datasets' column names and types.
- jinja's `from_string` is memoized: lm-eval compiles each template anew for every doc (~10 ms), which
  would make 27,000 prompts take minutes; a compiled template renders the same text every time.

    requests = harness_requests("mmlu", data_dir)   # {"anatomy/0": [(context, " A"), ... (context, " D")]}
"""

from __future__ import annotations

import csv
import functools
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

# lm-eval's task (group) name for each benchmark, and its task folder under lm_eval/tasks/
TASKS = {"mmlu": ("mmlu", "mmlu"), "ceval": ("ceval-valid", "ceval"), "cmmlu": ("cmmlu", "cmmlu")}
SHOTS = 5


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _with_header(path: Path) -> list[dict]:
    rows = _rows(path)
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def _local_docs(data_dir: Path, dataset_path: str, subject: str) -> dict[str, list[dict]]:
    """One subject's splits as the Hub dataset lm-eval names would give them (columns, names, types)."""
    if dataset_path == "cais/mmlu":  # no header: question,A,B,C,D,answer; the Hub has choices (list), answer (0-3)
        return {split: [{"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5])}
                        for r in _rows(data_dir / f"mmlu/{split}/{subject}_{split}.csv")] for split in ("dev", "test")}
    if dataset_path == "ceval/ceval-exam":
        out = {split: _with_header(data_dir / f"ceval/{split}/{subject}_{split}.csv") for split in ("dev", "val")}
        for rows in out.values():
            for r in rows:
                r["id"] = int(r["id"])
        return out
    if dataset_path == "haonan-li/cmmlu":  # header ",Question,A,B,C,D,Answer": the unnamed row number goes
        return {split: [{k: v for k, v in r.items() if k}
                        for r in _with_header(data_dir / f"cmmlu/{split}/{subject}.csv")] for split in ("dev", "test")}
    raise AssertionError(f"lm-eval's task wants {dataset_path}, which these tests have no local copy of")


@contextmanager
def _offline(data_dir: Path):
    import datasets
    import lm_eval.utils
    from lm_eval.api.task import ConfigurableTask

    def download(self, dataset_kwargs=None, **kwargs):
        docs = _local_docs(data_dir, self.DATASET_PATH, self.DATASET_NAME)
        self.dataset = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in docs.items()})

    datasets.disable_progress_bars()
    with mock.patch.object(ConfigurableTask, "download", download), \
            mock.patch.object(lm_eval.utils.env, "from_string", functools.cache(lm_eval.utils.env.from_string)), \
            mock.patch("lm_eval.api.task.tqdm", lambda docs, **kw: docs):  # no progress bar per subject
        yield


def _leaves(task_dict: dict) -> list:
    out = []
    for value in task_dict.values():
        out.extend(_leaves(value) if isinstance(value, dict) else [value])
    return out


def harness_tasks(benchmark: str, data_dir: Path, num_fewshot: int = SHOTS) -> list:
    """lm-eval's leaf tasks of the benchmark's group, built over the local data, with their requests."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    name, folder = TASKS[benchmark]
    with _offline(data_dir):
        # Only the benchmark's own task folder is indexed: the whole of lm_eval/tasks takes ~25 s to scan.
        tm = TaskManager(include_path=str(Path(lm_eval.tasks.__file__).parent / folder), include_defaults=False)
        if hasattr(tm, "load"):
            tasks = list(tm.load([name])["tasks"].values())
        else:
            from lm_eval.tasks import get_task_dict

            tasks = _leaves(get_task_dict([name], tm))
        for task in tasks:
            # What simple_evaluate does with --num_fewshot: these tasks set none of their own (0 shots by default).
            assert task.get_config("num_fewshot") is None, f"{task.config.task} now sets num_fewshot itself"
            task.set_config(key="num_fewshot", value=num_fewshot)
            task.set_fewshot_seed(seed=1234)  # simple_evaluate's default fewshot_random_seed
            task.build_all_requests()
    return tasks


@functools.cache
def harness_requests(benchmark: str, data_dir: Path, num_fewshot: int = SHOTS) -> dict[str, list[tuple[str, str]]]:
    """"subject/row" -> the (context, continuation) of each loglikelihood request, in the choices' order
    (cached: treat it as read-only)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for task in harness_tasks(benchmark, data_dir, num_fewshot):
        for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
            assert inst.request_type == "loglikelihood"
            out.setdefault(f"{task.config.dataset_name}/{inst.doc_id}", []).append(tuple(inst.arguments))
    return out
