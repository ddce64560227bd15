"""The checks that speed did not change answers, for `python -m lab.bench fast --cases agree`: the fast decoder's
logits against the plain path's and against float32 arithmetic on the same weights, LLM.int8 products
against bitsandbytes', and MMLU letters against lm-evaluation-harness's HFLM."""

from __future__ import annotations

import torch

from lab import runtime
from lab.bench.chat import prompt_of_length
from lab.engine.decoder import StaticDecoder
from lab.engine.layers import is_int8

LETTERS = ["A", "B", "C", "D"]


def hflm_scores(model, prompts: list[str], batch_size: int = 32) -> list[list[float]]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model.model, tokenizer=model.tok, batch_size=batch_size, device=str(model.device))
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=(p, f" {x}"), idx=i)
            for p in prompts for i, x in enumerate(LETTERS)]
    flat = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    return [flat[4 * i:4 * i + 4] for i in range(len(prompts))]


def letter_agreement(ours: list[list[float]], ref: list[list[float]], margin: float) -> dict:
    """Largest |difference| of a letter's log-prob; letters that differ where the reference's top two are
    more than `margin` apart (bf16 noise cannot explain those); letters equal overall."""
    worst, firm_flips, same = 0.0, 0, 0
    for a, b in zip(ours, ref):
        worst = max(worst, max(abs(x - y) for x, y in zip(a, b)))
        top = sorted(b, reverse=True)
        pick_a, pick_b = a.index(max(a)), b.index(max(b))
        same += pick_a == pick_b
        if pick_a != pick_b and top[0] - top[1] > margin:
            firm_flips += 1
    return {"max_abs_diff": worst, "firm_flips": firm_flips, "same_letter": same / len(ref), "n": len(ref)}


def decoder_agreement(model, prompt_tokens: int = 512, steps: int = 256) -> dict:
    """Teacher-forced: the plain path's own greedy continuation goes through the fast decoder and through
    Transformers' forward with its cache, one token at a time (the plain decode path: for LLM.int8 that
    matters, since its outlier columns are chosen per call), and the logits are compared at every position."""
    from transformers import DynamicCache

    messages = prompt_of_length(model, prompt_tokens)
    prompt = model.encode(model.render(messages))
    ids = torch.tensor([prompt], device=model.device)
    with torch.inference_mode():
        seq = model.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                                   min_new_tokens=steps, do_sample=False, pad_token_id=model.pad_id)[0].tolist()
        forced = seq[len(prompt):]
        cache = DynamicCache(config=model.model.config)
        want = [model.model(input_ids=ids, past_key_values=cache, use_cache=True).logits[0, -1].float()]
        for t in forced[:-1]:
            step = torch.tensor([[t]], device=model.device)
            want.append(model.model(input_ids=step, past_key_values=cache, use_cache=True).logits[0, -1].float())
        want = torch.stack(want)
        whole = model.model(torch.tensor([seq[:-1]], device=model.device)).logits[0, len(prompt) - 1:].float()
        dec = model.fast.decoder(1, len(seq) + 1) if model.fast is not None else \
            StaticDecoder(model.model, 1, len(seq) + 1, graphs=False)
        got = [dec.prefill([prompt])[0].clone()]
        for t in forced[:-1]:
            dec.ids[0, 0] = t
            got.append(dec.step()[0].clone())
        got = torch.stack(got)

    def compare(a, b):
        rel = ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()
        return rel, (a.argmax(-1) == b.argmax(-1)).float().mean().item()

    rel, same = compare(got, want)
    floor_rel, floor_same = compare(whole, want)
    out = {"positions": len(forced), "max_rel_err": rel, "argmax_same": same, "graphs": dec.graph is not None,
           "compiled": dec.compiled, "floor_rel_err": floor_rel, "floor_argmax_same": floor_same}
    if model.model.dtype != torch.float32 and not is_int8(model.model):
        exact = float32_twin_logits(model.model, seq)[len(prompt) - 1:]
        out["exact"] = {"fast": compare(got, exact), "plain": compare(want, exact),
                        "plain_whole": compare(whole, exact)}
    return out


@torch.inference_mode()
def float32_twin_logits(model, seq: list[int]) -> torch.Tensor:
    """Logits of `seq` (one forward pass) from a float32 copy of `model`'s own weights — bf16 values as they
    are, NF4 weights dequantized to the values its matmuls use — so the only difference from the model is
    16-bit rounding of the activations: what both the plain and the fast path approximate. LLM.int8 has no
    such twin (it quantizes the activations too)."""
    import copy

    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(model.config)
    cfg.quantization_config = None
    with torch.device("meta"):
        twin = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    twin.to_empty(device=model.device)
    own = dict(model.named_modules())
    for name, mod in twin.named_modules():
        src = own[name]
        for pname, p in mod.named_parameters(recurse=False):
            w = getattr(src, pname)
            if getattr(w, "quant_state", None) is not None:  # bitsandbytes NF4
                import bitsandbytes.functional as bnbf

                w = bnbf.dequantize_4bit(w.data, w.quant_state)
            p.copy_(w.reshape(p.shape).float())
        for bname, b in mod.named_buffers(recurse=False):
            b.copy_(getattr(src, bname))
    logits = twin(torch.tensor([seq[:-1]], device=model.device)).logits[0].float()
    del twin
    runtime.release_gpu_memory()
    return logits


def int8_product_agreement(model, layers: int = 4) -> dict:
    """`lab.engine.kernels.int8.Int8Linear` against bitsandbytes' `Linear8bitLt.forward` on the model's own int8 layers,
    for 1 and 4 rows with outlier columns planted (values 6-20 in 1-24 columns)."""
    from lab.engine.kernels.int8 import Int8Linear, is_int8_linear

    gen = torch.Generator(device=model.device).manual_seed(0)
    worst, equal, total = 0.0, 0, 0
    with torch.inference_mode():
        for layer in model.model.model.layers[:layers]:
            for m in [m for m in layer.modules() if is_int8_linear(m)]:
                for rows in (1, 4):
                    x = torch.randn(rows, m.in_features, generator=gen, device=model.device).half()
                    n_out = int(torch.randint(1, 25, (1,), generator=gen, device=model.device))
                    cols = torch.randperm(m.in_features, generator=gen, device=model.device)[:n_out]
                    x[torch.randint(0, rows, (n_out,), generator=gen, device=model.device), cols] = \
                        (6 + 14 * torch.rand(n_out, generator=gen, device=model.device)).half()
                    want = m(x)
                    got = Int8Linear.of([m], torch.zeros((), dtype=torch.long, device=model.device))(x)
                    worst = max(worst, ((got - want).abs().max() / want.abs().max()).item())
                    equal += int(torch.equal(got, want))
                    total += 1
    return {"products": total, "bit_equal": equal, "max_rel_diff": worst}


