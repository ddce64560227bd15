"""Transformers models loaded in this process.

    load        the checkpoint with bitsandbytes (4/8-bit), bf16, fp16 or fp32; YaRN for long contexts
    model       HFModel: the interface, the lock, the fast path's decoders
    streaming   chat replies streamed, one or several rows in one batch
    batch       batched generation for evaluations and the server
    scoring     log-probabilities of answer options (multiple choice)
    logprobs    per-token log-probabilities (OpenAI's logprobs and echo)
    grammar     JSON mode enforced while decoding (xgrammar)
    decoding    streamer, stop strings, incremental detokenizing
    memory      batch sizes from free GPU memory; out of memory as a sentence
"""

from lab.models.hf.load import load_hf
from lab.models.hf.model import HFModel

__all__ = ["HFModel", "load_hf"]
