"""MMLU logprob mode agrees with lm-evaluation-harness's Hugging Face model on the same prompts.

For 100 five-shot MMLU questions (real data, tiny-random in float32 on the CPU) the log-probability
of each answer letter, and so the predicted letter, equals `HFLM.loglikelihood` within 1e-4.
"""

import pytest

from lab.eval.kinds.choice import continuations, pick
from lab.eval.runner import EvalRequest, Runner
from lab.eval.store import RunStore

pytestmark = pytest.mark.slow


def test_mmlu_letters_and_logprobs_match_lm_eval(tiny, tmp_path, data_dir):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    runner = Runner(RunStore.open(tmp_path))
    req = EvalRequest("mmlu", limit=100, shots=5, seed=11, batch_size=8)
    result = runner.run(tiny, req)
    samples = result.samples
    assert len(samples) == 100 and result.status == "finished"

    letters = ["A", "B", "C", "D"]
    # batch 1: HFLM keeps full-vocabulary (151,646) logits for every position, ~0.4 GB a prompt.
    lm = HFLM(pretrained=tiny.model, tokenizer=tiny.tok, batch_size=1, device="cpu")
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(s.prompt, cont), idx=i)
                for s in samples for i, cont in enumerate(continuations(letters))]
    theirs = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]

    worst = 0.0
    for n, s in enumerate(samples):
        ref = theirs[4 * n: 4 * n + 4]
        ours = [s.detail["logprobs"][x] for x in letters]
        worst = max(worst, *(abs(a - b) for a, b in zip(ours, ref)))
        assert s.extracted == pick(ref, letters), f"{s.key}: we picked {s.extracted}, lm-eval {pick(ref, letters)}"
    assert worst <= 1e-4, f"largest log-probability difference {worst:.2e}"
