"""lm-evaluation-harness as a client of lab.serve, at its defaults: its `local-completions` model pointed at a real
server (tiny-random in a subprocess, on a free port) scores 20 five-shot MMLU questions exactly as
`python -m lab.eval mmlu` does in this process (its Runner, over the same checkpoint and data).

At its defaults lm-eval finds the tokenizer itself: `tokenizer_backend="auto"` asks GET /tokenizer_info (and
POST /tokenize) and, since both answer, tokenizes through the server ("remote"), with `tokenized_requests=True`:
each loglikelihood request is sent as token ids (context + continuation, echo, logprobs=1, max_tokens=1), and
lm-eval reads the continuation's log-probabilities by position. Nothing is overridden but `base_url` and `model`;
so its default max_length (2,048) holds, and a prompt longer than that (one of these 20) is cut from the left by
lm-eval itself: its numbers then differ a little from ours (its letter, here, does not).
The requests are lm-eval's own (tests/eval/lmeval_tasks.py builds them from its task YAMLs over the local CSVs).
"""

from __future__ import annotations

import pytest

from lab.eval.kinds.choice import continuations, pick
from lab.eval.runner import EvalRequest, Runner
from lab.eval.store import RunStore
from tests.eval.lmeval_tasks import harness_requests

pytestmark = pytest.mark.slow
LETTERS = ["A", "B", "C", "D"]


def test_local_completions_at_its_defaults_scores_mmlu_as_lab_eval(open_server, tiny, tmp_path, data_dir):
    pytest.importorskip("tenacity", reason="lm-eval's API models need lm_eval[api] (the test extra has it)")
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    ours = Runner(RunStore.open(tmp_path)).run(tiny, EvalRequest("mmlu", limit=20, shots=5, seed=11, batch_size=8,
                                                                 data_dir=str(data_dir)))
    assert ours.status == "finished" and len(ours.samples) == 20

    lm = get_model("local-completions")(base_url=f"{open_server}/v1/completions", model="tiny-random")
    assert lm.tokenizer_backend == "remote" and lm.tokenized_requests  # found via /tokenizer_info; ids are sent

    theirs_requests = harness_requests("mmlu", data_dir)
    requests = []
    for s in ours.samples:
        pairs = theirs_requests[s.key]
        assert s.prompt == pairs[0][0] and [c for _, c in pairs] == continuations(LETTERS)
        requests += [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
                     for i, pair in enumerate(pairs)]
    theirs = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]

    worst, correct, cut = 0.0, 0, 0
    for n, s in enumerate(ours.samples):
        ref = theirs[4 * n: 4 * n + 4]
        if len(tiny.encode(s.prompt + " A")) > lm.max_length:  # lm-eval truncated this prompt
            cut += 1
        else:
            worst = max(worst, *(abs(s.detail["logprobs"][x] - r) for x, r in zip(LETTERS, ref)))
        assert s.extracted == pick(ref, LETTERS), f"{s.key}: lab.eval {s.extracted}, lm-eval {pick(ref, LETTERS)}"
        correct += pick(ref, LETTERS) == s.gold
    assert correct == sum(s.correct for s in ours.samples)  # the same score
    assert worst <= 1e-4, f"largest log-probability difference {worst:.2e}"
    assert cut < 5, f"{cut} of 20 prompts were longer than lm-eval's max_length"
