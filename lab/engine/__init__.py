"""The CUDA fast path: token ids in, token ids out (no tokenizer here).

    layers      rotary, RMSNorm, fused projections and the ONE decoder-layer forward everything uses
    decoder     StaticDecoder: the static KV cache, the decode step and the prompt step, CUDA graphs
    sampling    every sampler: Transformers processors, the host sampler and the in-graph one
    loop        decode(): prefill, then one step per token, the host one step behind the GPU
    fastpath    FastPath: a model's decoders, one per shape
    prefix      shared-prefix scoring for multiple choice
    kernels     LLM.int8 products without host reads

Plain `generate()` at batch 1 is bound by the host (a thousand small kernel launches per token); here one
step is one CUDA graph replay. How each part was measured: lab/bench/results/fast-7b-h100.md.
"""
