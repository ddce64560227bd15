"""The fast paths against their baselines, each pair measured in the same process, and the checks that
speed did not change answers.

    # on a CUDA machine (the 7B shape comes from LAB_DATA_DIR/qwen2.5-tokenizer/config.json)
    python -m lab.bench fast --cases chat,memory,compare,humaneval,mmlu,agree --out lab/bench/results
    # anywhere, small (what the tests run)
    python -m lab.bench fast --shape tiny --quants fp32 --cases chat,agree --new-tokens 16

Cases (rows of the table: case, baseline, ours, ratio, target, met):
  chat       decode tok/s and time to first token at batch 1 through `HFModel.stream_chat` (the page's
             path, its sampling defaults) vs a bare greedy `generate()`, per quantization
  memory     peak GPU memory of a 4-bit chat reply at a 4K-token context
  compare    4 variants x 256 tokens in one batch (`HFModel.generate`) vs 4 sequential plain generate()
  humaneval  164 instruct prompts x 512 forced tokens (`HFModel.generate`) vs plain generate() one prompt at a
             time on 8 prompts, per token
  mmlu       all 14,042 MMLU test questions, 5-shot logprob, `HFModel.score_choices` vs lm-evaluation-harness
             `HFLM.loglikelihood` on the same prompts of a 1,000-question sample over all subjects
  agree      teacher-forced logits of the fast decoder vs a plain forward pass (per quantization); MMLU letters
             and log-probs vs HFLM in bf16 and in float32
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from lab import runtime
from lab.bench.agree import decoder_agreement, hflm_scores, int8_product_agreement, letter_agreement
from lab.bench.chat import plain_generate_tok_s, prompt_of_length, shape_checkpoint
from lab.interface import SamplingParams
from lab.models import load_model
from lab.runtime import GIB

LETTERS = ["A", "B", "C", "D"]
MMLU_BASELINE_SUBJECTS = ["abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge"]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def row(case: str, baseline, ours, target: str, met: bool | None, unit: str = "", note: str = "") -> dict:
    ratio = (ours / baseline) if isinstance(baseline, (int, float)) and isinstance(ours, (int, float)) and baseline \
        else None
    return {"case": case, "baseline": baseline, "ours": ours, "unit": unit, "ratio": ratio, "target": target,
            "met": met, "note": note}


# ---- chat ------------------------------------------------------------------------------------
def case_chat(model, quant: str, prompt_tokens: int, new_tokens: int, repeats: int) -> list[dict]:
    messages = prompt_of_length(model, prompt_tokens)
    page = SamplingParams(max_new_tokens=new_tokens, seed=0, ignore_eos=True)  # the page's sampling defaults
    list(model.stream_chat(messages, SamplingParams(max_new_tokens=8, seed=0, ignore_eos=True)))  # warm-up + capture
    list(model.stream_chat(messages, page))
    plain_generate_tok_s(model, messages, 8)
    ours_tps, ours_ttft, plain_tps, plain_ttft = [], [], [], []
    ids = torch.tensor([model.encode(model.render(messages))], device=model.device)
    for _ in range(repeats):
        stats = [c.stats for c in model.stream_chat(messages, page) if c.stats][0]
        assert stats.completion_tokens == new_tokens, stats
        ours_tps.append(stats.decode_tokens_per_s)
        ours_ttft.append(stats.ttft_s * 1000)
        plain_tps.append(plain_generate_tok_s(model, messages, new_tokens))
        t, _ = timed(lambda: model.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1,
                                                  do_sample=False, pad_token_id=model.pad_id))
        plain_ttft.append(t * 1000)
    med = statistics.median
    target = {"bf16": 150, "4bit": 150, "8bit": 30}.get(quant, 0)
    rows = [row(f"chat decode, batch 1, {prompt_tokens}-token prompt, {new_tokens} new, {quant}", med(plain_tps),
                med(ours_tps), f">= {target} tok/s", med(ours_tps) >= target, "tok/s",
                f"ours: page path, sampled {[round(x, 1) for x in ours_tps]}; plain: bare greedy generate() "
                f"{[round(x, 1) for x in plain_tps]}")]
    if quant in ("bf16", "4bit") or model.device.type != "cuda":
        rows.append(row(f"time to first token, {prompt_tokens}-token prompt, {quant}", med(plain_ttft), med(ours_ttft),
                        "<= 50 ms", med(ours_ttft) <= 50, "ms",
                        "ours: request start (template + tokenize included) to first token on the page path; "
                        "plain: generate(max_new_tokens=1) on ids"))
    return rows


def case_memory(model, context: int = 4096, new_tokens: int = 256) -> dict:
    messages = prompt_of_length(model, context - new_tokens)
    runtime.release_gpu_memory()
    stats = [c.stats for c in model.stream_chat(messages, SamplingParams(max_new_tokens=new_tokens, seed=0,
                                                                         ignore_eos=True)) if c.stats][0]
    peak = stats.gpu_mem_peak_gib
    reserved = torch.cuda.max_memory_reserved() / GIB  # what PyTorch held: free blocks and graph pools too
    return row(f"peak GPU memory, {model.info.quant} chat at {context} tokens of context", None, round(peak, 2),
               "<= 6.5 GiB", peak <= 6.5, "GiB", f"weights {model.info.weight_bytes / GIB:.2f} GiB; peak allocated "
               f"by tensors; PyTorch's reserved peak (cached blocks and captured graphs' pools) {reserved:.2f} GiB")


# ---- batched generation ----------------------------------------------------------------------------
def plain_sequential(model, prompts: list[str], new_tokens: int) -> float:
    total = 0.0
    for p in prompts:
        ids = torch.tensor([model.encode(p)], device=model.device)
        t, _ = timed(lambda: model.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                  do_sample=False, pad_token_id=model.pad_id))
        total += t
    return total


def case_compare(model, new_tokens: int = 256) -> dict:
    """The Compare tab's path: `HFModel.stream_many`, four variants in one batch, streamed per row."""
    systems = ["You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", "Answer in one sentence.",
               "You are a patient teacher.", "Reply in Chinese."]
    messages = [[{"role": "system", "content": s}, {"role": "user", "content": "Explain CUDA graphs."}]
                for s in systems]
    params = [SamplingParams(max_new_tokens=new_tokens, seed=0, ignore_eos=True) for _ in systems]

    def run(ps):
        stats = [c.stats for _, c in model.stream_many(messages, ps) if c.stats]
        assert [s.completion_tokens for s in stats] == [p.max_new_tokens for p in ps], stats
        return stats

    run([SamplingParams(max_new_tokens=8, seed=0, ignore_eos=True) for _ in systems])  # warm-up
    ours, _ = timed(lambda: run(params))
    base = plain_sequential(model, [model.render(m) for m in messages], new_tokens)
    return row(f"Compare: 4 variants x {new_tokens} tokens ({model.info.quant})", round(base, 2), round(ours, 2),
               ">= 3x", base / ours >= 3, "s",
               "ours: HFModel.stream_many (the Compare tab's path, sampled, streamed); baseline: 4 plain greedy "
               "generate() one after another; ratio = baseline time / ours") | {"ratio": base / ours}


def plan_items(req) -> list:
    """The items an evaluation run of `req` would score, in its order (the bench's own run history)."""
    from lab.eval.runner import Runner
    from lab.eval.store import RunStore

    return Runner(RunStore.open(Path("/tmp/lab-bench-runs"))).plan(req).items


def humaneval_prompts(model) -> list[str]:
    from lab.eval.plan import EvalRequest

    return [it.prompt if isinstance(it.prompt, str) else model.render(it.prompt)
            for it in plan_items(EvalRequest("humaneval"))]


def case_humaneval(model, new_tokens: int = 512) -> dict:
    prompts = humaneval_prompts(model)
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens, ignore_eos=True)
    ours, out = timed(lambda: model.generate(prompts, params))
    assert all(c.completion_tokens == new_tokens for c in out), [c.completion_tokens for c in out][:5]
    per_token = plain_sequential(model, prompts[:8], new_tokens) / (8 * new_tokens)
    base = per_token * len(prompts) * new_tokens
    return row(f"HumanEval: {len(prompts)} instruct prompts x {new_tokens} tokens, {model.info.quant}", round(base, 1),
               round(ours, 1), "<= 30 s", ours <= 30, "s",
               f"baseline extrapolated from 8 prompts one at a time ({per_token * 1000:.1f} ms/token)") \
        | {"ratio": base / ours}


# ---- MMLU ---------------------------------------------------------------------------------------
def mmlu_prompts(subjects: list[str] | None = None) -> list:
    from lab.eval.plan import EvalRequest

    return plan_items(EvalRequest("mmlu", shots=5, subjects=subjects))


def ours_scores(model, prompts: list[str]) -> list[list[float]]:
    return model.score_choices(prompts, [f" {x}" for x in LETTERS])


def mmlu_sample(items: list, n: int = 1000, seed: int = 0) -> list[int]:
    """Indices of a seeded sample of n questions spread over every subject (what --limit plans): its
    prompts are as long as the whole set's on average, which a few whole subjects' are not."""
    from lab.eval.plan import EvalRequest

    keys = {it.key for it in plan_items(EvalRequest("mmlu", shots=5, limit=n, seed=seed))}
    return [i for i, it in enumerate(items) if it.key in keys]


def case_mmlu(model) -> tuple[dict, dict]:
    items = mmlu_prompts()
    prompts = [it.prompt for it in items]
    ours_scores(model, prompts[:64])  # warm-up
    t_tok, _ = timed(lambda: model.scorer.split_choices(prompts, [f" {x}" for x in LETTERS]))  # its share, for the notes
    t_ours, scores = timed(lambda: ours_scores(model, prompts))
    tokens = [len(c) for c, _ in model.scorer.split_choices(prompts, [" A"])]
    hflm_scores(model, prompts[:32])  # warm-up
    # lm-eval's time per question grows with the prompt's length (it runs every prompt whole), so the
    # baseline runs on a sample of the whole set; five whole subjects are kept for the agreement check.
    sample = mmlu_sample(items)
    # batch 16: at 32 its full-vocabulary logits for the ~2,800-token history prompts need 47 GiB
    t_ref, _ = timed(lambda: hflm_scores(model, [prompts[i] for i in sample], batch_size=16))
    sub = [i for i, it in enumerate(items) if it.subject in MMLU_BASELINE_SUBJECTS]
    t_sub, ref = timed(lambda: hflm_scores(model, [prompts[i] for i in sub]))
    per_q_ref, per_q_ours = t_ref / len(sample), t_ours / len(prompts)

    def mean_tokens(idx) -> float:
        return sum(tokens[i] for i in idx) / len(idx)

    speed = row(f"MMLU test, all {len(prompts):,} questions, 5-shot logprob, {model.info.quant}",
                round(per_q_ref * len(prompts), 1), round(t_ours, 1), "<= 90 s and >= 5x lm-eval per question",
                t_ours <= 90 and per_q_ref / per_q_ours >= 5, "s",
                f"lm-eval HFLM (batch 16) on a seeded sample of {len(sample)} questions over all subjects (mean "
                f"prompt {mean_tokens(sample):.0f} tokens; whole set {mean_tokens(range(len(prompts))):.0f}): "
                f"{1 / per_q_ref:.1f} q/s, extrapolated; ours {1 / per_q_ours:.1f} q/s, of which tokenizing "
                f"{t_tok:.1f} s. On the {len(sub)} questions of {len(MMLU_BASELINE_SUBJECTS)} short subjects "
                f"({mean_tokens(sub):.0f} tokens) lm-eval (batch 32) runs {len(sub) / t_sub:.1f} q/s, and ours is "
                f"{t_sub / len(sub) / per_q_ours:.2f}x that") \
        | {"ratio": per_q_ref / per_q_ours}
    agree = letter_agreement([scores[i] for i in sub], ref, margin=0.4)
    accuracy = sum(s.index(max(s)) == LETTERS.index(it.gold) for s, it in zip(scores, items)) / len(items)
    speed["note"] += f"; accuracy {100 * accuracy:.1f}% (random weights)"
    return speed, agree


# ---- the run ----------------------------------------------------------------------------------------
def fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def to_markdown(rows: list[dict], checks: list[dict], meta: dict) -> str:
    lines = [f"# Fast paths: {meta['shape']} shape, random weights", "", f"Command: `{meta['command']}`", "",
             f"Measured {meta['date']}; " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v), "",
             "| case | baseline | ours | ratio | target | met | how |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        unit = f" {r['unit']}" if r["unit"] else ""
        met = {True: "yes", False: "**no**", None: "—"}[r["met"]]
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['case']} | {fmt(r['baseline'])}{unit if r['baseline'] is not None else ''} | "
                     f"{fmt(r['ours'])}{unit} | {ratio} | {r['target']} | {met} | {r['note']} |")
    if checks:
        lines += ["", "## Same answers", "", "| check | result | target | met |", "| --- | --- | --- | --- |"]
        for c in checks:
            lines.append(f"| {c['check']} | {c['result']} | {c['target']} | {'yes' if c['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    quants = [q.strip() for q in args.quants.split(",") if q.strip()]
    path = shape_checkpoint(args.shape, Path(args.work_dir))
    meta = {"shape": args.shape, "command": args.command_line, "versions": runtime.versions(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    rows, checks = [], []
    out = Path(args.out) if args.out else None

    def save() -> None:
        if out:
            out.mkdir(parents=True, exist_ok=True)
            name = f"fast-{args.shape}"
            (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows, "checks": checks}, indent=2))
            (out / f"{name}.md").write_text(to_markdown(rows, checks, meta))

    def check(name: str, result: str, target: str, met: bool) -> None:
        checks.append({"check": name, "result": result, "target": target, "met": met})
        print(json.dumps(checks[-1]), flush=True)
        save()

    def add(r: dict) -> None:
        rows.append(r)
        print(json.dumps(r), flush=True)
        save()

    for quant in quants:
        t = time.perf_counter()
        model = load_model(str(path), quant=quant)
        print(f"loaded {model.info.summary()} in {time.perf_counter() - t:.0f} s (fast path warm-up included); "
              f"fast path: {model.fast_off_reason or 'on'}", flush=True)
        gpu = model.device.type == "cuda"
        if "agree" in cases:
            a = decoder_agreement(model, args.prompt_tokens, min(args.new_tokens, 256))
            tight = quant == "fp32"
            check(f"decoder logits vs plain decode (Transformers, its cache, token by token), {quant}, "
                  f"{a['positions']} positions, graphs {a['graphs']}, compiled {a['compiled']}",
                  f"max rel err {a['max_rel_err']:.2e}, argmax same {100 * a['argmax_same']:.1f}% (plain vs plain: "
                  f"one forward over the whole sequence vs token by token: {a['floor_rel_err']:.2e}, "
                  f"{100 * a['floor_argmax_same']:.1f}%)",
                  "rel err <= 1e-4, argmax 100%" if tight else "rel err <= 1e-2, argmax >= 99%",
                  a["max_rel_err"] <= 1e-4 and a["argmax_same"] == 1.0 if tight
                  else a["max_rel_err"] <= 1e-2 and a["argmax_same"] >= 0.99)
            if "exact" in a:  # how far each 16-bit path is from the same weights in float32 arithmetic
                (f_rel, f_same), (p_rel, p_same), (w_rel, w_same) = (a["exact"][k] for k in ("fast", "plain",
                                                                                              "plain_whole"))
                check(f"decoder logits vs float32 arithmetic on the same weights, {quant}, {a['positions']} positions",
                      f"fast: max rel err {f_rel:.2e}, argmax same {100 * f_same:.1f}%; plain token by token: "
                      f"{p_rel:.2e}, {100 * p_same:.1f}%; plain one forward: {w_rel:.2e}, {100 * w_same:.1f}%",
                      "no further than the plain path: rel err <= 1.25x plain's, argmax within 2 points",
                      f_rel <= 1.25 * p_rel and f_same >= p_same - 0.02)
        if "agree" in cases and quant == "8bit" and gpu:
            a = int8_product_agreement(model)
            check(f"LLM.int8 products without host reads (lab.int8) vs bitsandbytes Linear8bitLt, {a['products']} "
                  "products (4 layers, 1 and 4 rows, 1-24 outlier columns planted)",
                  f"bit-equal {a['bit_equal']}/{a['products']}, max diff {a['max_rel_diff']:.1e} of the output's "
                  "largest value", "same arithmetic: diff at fp16 rounding (<= 1e-3)", a["max_rel_diff"] <= 1e-3)
        if quant == "fp32" and gpu:  # float32 on the GPU: exactness checks only
            if "mmlu" in cases and "agree" in cases:
                items = mmlu_prompts(MMLU_BASELINE_SUBJECTS[:2])  # float32 is slow: two subjects
                prompts = [it.prompt for it in items]
                agree = letter_agreement(ours_scores(model, prompts), hflm_scores(model, prompts, 8), margin=0.0)
                check(f"MMLU letters vs lm-eval HFLM, float32 on the GPU, {agree['n']} questions",
                      f"max abs diff {agree['max_abs_diff']:.1e}, same letter {100 * agree['same_letter']:.2f}%",
                      "same letter >= 99.9%, |diff| <= 1e-3",
                      agree["same_letter"] >= 0.999 and agree["max_abs_diff"] <= 1e-3)
        else:
            if "chat" in cases:
                for r in case_chat(model, quant, args.prompt_tokens, args.new_tokens, args.repeats):
                    add(r)
            if "memory" in cases and quant == "4bit":
                add(case_memory(model))
            if quant in ("bf16", "fp32") and gpu:
                if "compare" in cases:
                    add(case_compare(model))
                if "humaneval" in cases:
                    add(case_humaneval(model))
                if "mmlu" in cases:
                    speed, agree = case_mmlu(model)
                    add(speed)
                    if "agree" in cases:
                        check(f"MMLU letters vs lm-eval HFLM, {quant}, {agree['n']} questions",
                              f"max abs diff {agree['max_abs_diff']:.3f}, flips where HFLM margin > 0.4: "
                              f"{agree['firm_flips']}, same letter {100 * agree['same_letter']:.1f}%",
                              "max abs diff <= 0.2, no flips past margin 0.4",
                              agree["max_abs_diff"] <= 0.2 and agree["firm_flips"] == 0)
        model.close()
        del model
        runtime.release_gpu_memory()
    print(to_markdown(rows, checks, meta))
    return 0
