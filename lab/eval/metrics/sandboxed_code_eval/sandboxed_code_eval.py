"""sandboxed_code_eval: a drop-in for Hugging Face's `code_eval` that never runs model code in this process.

    import evaluate
    from lab.eval.metrics import SANDBOXED_CODE_EVAL
    metric = evaluate.load(SANDBOXED_CODE_EVAL)    # a local path: no network, no HF_ALLOW_CODE_EVAL
    pass_at_k, results = metric.compute(predictions=[["def add(a, b):\\n    return a + b\\n"]],
                                        references=["assert add(2, 3) == 5"], k=[1])

Same inputs and outputs as code_eval (predictions: a list of whole candidate programs per task; references:
each task's test, ending in check(entry_point); k, num_workers, timeout), plus `prompts`, the tasks' trusted
prompts whose helpers some tests call. Each program runs in lab.eval.sandbox: a worker process in its own
namespaces and private root under limits, judged by a separate process that runs the test and sees only
the values the program returns. The rules (how a reference is split, what prompt helpers mean here) are in
lab/eval/code_eval.py, which does the work: evaluate copies this file into its module cache, and from
there it imports the installed lab package.
"""

import datasets
import evaluate

from lab.eval.code_eval import compute

_DESCRIPTION = """\
pass@k for code synthesis (HumanEval's shape), with every candidate program judged in Qwen Lab's sandbox
(lab.eval.sandbox): the program runs in a worker process under limits and namespaces, the test in a judge
process that calls it through a proxy, so model code never runs in the caller's process.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one list of candidate programs per task; each is a whole program (prompt + completion).
    references: one test per task, ending in its call check(entry_point); or one function's asserts.
    k: the k of pass@k (default [1, 10, 100]); only those no larger than every task's number of candidates.
    num_workers: programs judged at a time (default 4).
    timeout: seconds of wall clock per program (default 3.0).
    prompts: optional, one per task: the benchmark's own prompt, run by the judge for the helpers and
        imports a test uses (HumanEval/32, /38 and /50 call such helpers).
Returns:
    pass_at_k: {"pass@1": float, ...}
    results: {task index: [(completion_id, {"task_id", "completion_id", "passed", "result", "status"}), ...]}
Examples:
    >>> metric = evaluate.load(SANDBOXED_CODE_EVAL)
    >>> pass_at_k, results = metric.compute(references=["assert add(2, 3) == 5"],
    ...                                     predictions=[["def add(a, b): return a * b",
    ...                                                   "def add(a, b): return a + b"]], k=[1, 2])
    >>> pass_at_k
    {'pass@1': 0.5, 'pass@2': 1.0}
"""

_CITATION = """\
@article{chen2021codex,
  title={Evaluating Large Language Models Trained on Code},
  author={Chen, Mark and others},
  journal={arXiv preprint arXiv:2107.03374},
  year={2021}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SandboxedCodeEval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                        "references": datasets.Value("string")}),
            homepage="https://github.com/openai/human-eval",
            reference_urls=["https://arxiv.org/abs/2107.03374"],
            license="Apache-2.0",
        )

    def _compute(self, predictions, references, k=(1, 10, 100), num_workers=4, timeout=3.0, prompts=None):
        return compute(predictions, references, k=k, num_workers=num_workers, timeout=timeout, prompts=prompts)
