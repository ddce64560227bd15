"""MMLU logprob mode agrees with lm-evaluation-harness end to end: its own prompts, its own model.

For 100 five-shot MMLU questions (real data, tiny-random in float32 on the CPU) lm-eval's `mmlu` task builds
the loglikelihood requests itself (tests/eval/lmeval_tasks.py), so the prompts are lm-eval's, not ours. Each
of our prompts must equal that request's context byte for byte, and our log-probability of each answer
letter, and so the predicted letter, must equal `HFLM.loglikelihood` on lm-eval's requests within 1e-4.
"""

import pytest

from lab.eval.kinds.choice import continuations, pick
from lab.eval.runner import EvalRequest, Runner
from lab.eval.store import RunStore
from tests.eval.lmeval_tasks import harness_requests

pytestmark = pytest.mark.slow


def test_mmlu_letters_and_logprobs_match_lm_eval(tiny, tmp_path, data_dir):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    runner = Runner(RunStore.open(tmp_path))
    req = EvalRequest("mmlu", limit=100, shots=5, seed=11, batch_size=8, data_dir=str(data_dir))
    result = runner.run(tiny, req)
    samples = result.samples
    assert len(samples) == 100 and result.status == "finished"

    letters = ["A", "B", "C", "D"]
    theirs_requests = harness_requests("mmlu", data_dir)
    requests = []
    for s in samples:
        pairs = theirs_requests[s.key]  # lm-eval's (context, continuation) for A..D
        assert s.prompt == pairs[0][0], f"{s.key}: our prompt is not lm-eval's"
        assert [c for _, c in pairs] == continuations(letters)
        requests += [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
                     for i, pair in enumerate(pairs)]
    # batch 1: HFLM keeps full-vocabulary (151,646) logits for every position, ~0.4 GB a prompt.
    lm = HFLM(pretrained=tiny.model, tokenizer=tiny.tok, batch_size=1, device="cpu")
    theirs = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]

    worst = 0.0
    for n, s in enumerate(samples):
        ref = theirs[4 * n: 4 * n + 4]
        ours = [s.detail["logprobs"][x] for x in letters]
        worst = max(worst, *(abs(a - b) for a, b in zip(ours, ref)))
        assert s.extracted == pick(ref, letters), f"{s.key}: we picked {s.extracted}, lm-eval {pick(ref, letters)}"
    assert worst <= 1e-4, f"largest log-probability difference {worst:.2e}"
