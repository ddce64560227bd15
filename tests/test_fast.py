"""The fast paths give the plain path's answers (tiny-random, float32, on the CPU).

- `lab.fast`: teacher-forced next-token logits of the static-cache decoder equal a plain forward pass
  over the same tokens, for one row and for left-padded rows of different lengths; greedy decoding
  gives `generate()`'s tokens.
- `lab.prefix`: letters scored with a shared few-shot prefix computed once equal one forward pass
  over each whole prompt, on real 5-shot MMLU prompts.
The GPU versions of these checks (7B shape, bf16/NF4) are in `lab/bench/fast.py`.
"""

from __future__ import annotations

import pytest
import torch

from lab import fast
from lab.backend import SamplingParams
from lab.prefix import MIN_PREFIX, plan_batches, prefix_groups


def plain_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.model(torch.tensor([ids])).logits[0].float()


def teacher_forced(dec: fast.StaticDecoder, rows: list[list[int]], forced: list[list[int]]) -> list[torch.Tensor]:
    """Logits `dec` gives after each prompt and after each forced token, per row."""
    out = [[] for _ in rows]
    with torch.inference_mode():
        dec.k[0].fill_(7.0)  # slots past the prompt hold leftovers of an earlier reply
        logits = dec.prefill(rows)
        for step in range(len(forced[0])):
            for i in range(len(rows)):
                out[i].append(logits[i].clone())
            dec.ids[:len(rows), 0] = torch.tensor([f[step] for f in forced])
            logits = dec.step()
    return [torch.stack(o) for o in out]


@pytest.mark.parametrize("widths", [(), "exact", "padded"], ids=["model-forward", "prompt-step", "prompt-step-padded"])
def test_static_decoder_matches_a_plain_forward_pass(tiny, widths):
    """The prompt through the model's own forward, or through `_prompt_step` at its own width or
    right-padded to a wider one (the captured prefill's path on CUDA)."""
    prompt = tiny.encode(tiny.render([{"role": "user", "content": "Tell me about the sea."}]))
    forced = tiny.encode(" The sea is wide, blue and deep; 海很深。" * 2)[:24]
    widths = {"exact": (len(prompt),), "padded": (len(prompt) // 2, len(prompt) + 37, 250)}.get(widths, widths)
    dec = fast.StaticDecoder(tiny.model, batch=1, max_len=256, graphs=False, prompt_widths=widths)
    got = teacher_forced(dec, [prompt], [forced])[0]
    want = plain_logits(tiny, prompt + forced)[len(prompt) - 1:len(prompt) - 1 + len(forced)]
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_static_decoder_left_pads_rows_of_different_lengths(tiny):
    a = tiny.encode("A short prompt")
    b = tiny.encode("A much longer prompt that pads the other row on the left, by several tokens")
    forced = [tiny.encode(" one two three four five six seven")[:5], tiny.encode(" eight nine ten eleven twelve")[:5]]
    got = teacher_forced(fast.StaticDecoder(tiny.model, batch=2, max_len=256, graphs=False), [a, b], forced)
    for prompt, f, g in zip((a, b), forced, got):
        want = plain_logits(tiny, prompt + f)[len(prompt) - 1:len(prompt) - 1 + len(f)]
        assert torch.allclose(g, want, atol=1e-4, rtol=1e-4), (g - want).abs().max()
        assert (g.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.parametrize("in_graph", [True, False], ids=["graph-sampler", "eager-sampler"])
def test_greedy_decode_gives_generate_tokens(tiny, in_graph):
    rows = [tiny.encode(tiny.render([{"role": "user", "content": q}])) for q in ("Hi", "What is 2+2? Explain.")]
    params = SamplingParams(temperature=0, repetition_penalty=1.3, max_new_tokens=20)
    dec = fast.StaticDecoder(tiny.model, batch=3, max_len=256, eos_ids=tiny.eos_ids, pad_id=tiny.pad_id, graphs=False)
    sampler = fast.Sampler(params, tiny.eos_ids)
    assert sampler.in_graph
    sampler.in_graph = in_graph
    seen = []
    got = fast.decode(dec, rows, sampler, 20, tiny.eos_ids, tiny.pad_id, on_tokens=lambda t: seen.append(t))
    for row, new in zip(rows, got.tokens):
        ids = torch.tensor([row])
        with torch.no_grad():
            ref = tiny.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      **tiny._generation_kwargs(params))[0, len(row):].tolist()
        ref = ref[:next((i + 1 for i, t in enumerate(ref) if t in tiny.eos_ids), len(ref))]
        assert new == ref
    assert len(seen) == max(len(t) for t in got.tokens)  # every step reached the host, in order


def test_one_row_through_the_prompt_step_decodes_generate_tokens(tiny):
    """A chat turn on CUDA: the prompt right-padded through `_prompt_step`, then the decode steps; run
    twice on one decoder, so the second reply starts over the first one's keys and values."""
    params = SamplingParams(temperature=0, max_new_tokens=16)
    dec = fast.StaticDecoder(tiny.model, batch=1, max_len=256, eos_ids=tiny.eos_ids, pad_id=tiny.pad_id,
                             graphs=False, prompt_widths=(64, 128))
    for q in ("Write a long, long poem about the sea and the wind, please.", "Hi"):
        row = tiny.encode(tiny.render([{"role": "user", "content": q}]))
        assert len(row) < 128
        got = fast.decode(dec, [row], fast.Sampler(params, tiny.eos_ids), 16, tiny.eos_ids, tiny.pad_id)
        ids = torch.tensor([row])
        with torch.no_grad():
            ref = tiny.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      **tiny._generation_kwargs(params))[0, len(row):].tolist()
        assert got.tokens[0] == ref[:len(got.tokens[0])] and len(got.tokens[0]) == len(ref)


@torch.inference_mode()
def test_graph_sampler_draws_from_the_top_k_top_p_distribution(tiny):
    dec = fast.StaticDecoder(tiny.model, batch=64, max_len=16, eos_ids=[7], pad_id=0, graphs=False)
    logits = torch.full((64, dec.logits_buf.shape[1]), -30.0)
    logits[:, [3, 4, 5]] = torch.tensor([0.5, 0.3, 0.2]).log()
    torch.manual_seed(0)
    for params, want in ((SamplingParams(temperature=1.0, top_k=20, top_p=1.0, repetition_penalty=1.0),
                          {3: 0.5, 4: 0.3, 5: 0.2}),
                         (SamplingParams(temperature=1.0, top_k=2, top_p=1.0, repetition_penalty=1.0),
                          {3: 0.625, 4: 0.375}),
                         (SamplingParams(temperature=1.0, top_k=20, top_p=0.6, repetition_penalty=1.0),
                          {3: 0.625, 4: 0.375})):
        counts: dict[int, int] = {}
        dec.set_sampling(params, [[1]] * 64)
        for _ in range(40):
            dec.logits_buf.copy_(logits)
            dec.done.zero_()
            dec._sample()
            for t in dec.next.tolist():
                counts[t] = counts.get(t, 0) + 1
        assert set(counts) == set(want), counts
        for t, p in want.items():
            assert abs(counts[t] / 2560 - p) < 0.04, (params, counts)


@torch.inference_mode()
def test_graph_sampler_penalises_seen_tokens_and_blocks_end_of_turn(tiny):
    dec = fast.StaticDecoder(tiny.model, batch=1, max_len=16, eos_ids=[3], pad_id=0, graphs=False)
    logits = torch.full((1, dec.logits_buf.shape[1]), -30.0)
    logits[0, [3, 4, 5]] = torch.tensor([5.0, 2.0, 1.9])
    dec.set_sampling(SamplingParams(temperature=0, repetition_penalty=1.2, ignore_eos=True, max_new_tokens=4), [[4]])
    dec.logits_buf.copy_(logits)
    dec._sample()
    assert dec.next.item() == 5  # 3 is blocked, 4 was seen: 2.0 / 1.2 < 1.9
    dec.set_sampling(SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=4), [[4]])
    dec.logits_buf.copy_(logits)
    dec._sample()
    assert dec.next.item() == 3 and dec.done.item()  # end of turn: the row is finished and pads from now on
    dec.logits_buf.copy_(logits)
    dec._sample()
    assert dec.next.item() == 0


def test_sampler_never_ends_before_min_new_tokens(tiny):
    params = SamplingParams(temperature=0, max_new_tokens=5, ignore_eos=True)
    logits = torch.zeros(1, 50)
    logits[0, tiny.eos_ids[0] % 50] = 10.0
    s = fast.Sampler(params, [tiny.eos_ids[0] % 50])
    assert s(torch.zeros(1, 1, dtype=torch.long), logits, 0).item() != tiny.eos_ids[0] % 50
    assert s(torch.zeros(1, 1, dtype=torch.long), logits, 5).item() == tiny.eos_ids[0] % 50


def test_prefix_groups_join_rows_sharing_a_long_start():
    shot = list(range(100, 100 + 2 * MIN_PREFIX))
    other = list(range(500, 500 + 2 * MIN_PREFIX))
    rows = [shot + [1, 2], other + [3], shot + [4, 5, 6], [7, 8], other + [9, 9]]
    groups = {tuple(sorted(idx)): n for n, idx in prefix_groups(rows)}
    assert groups == {(0, 2): len(shot), (1, 4): len(other), (3,): 0}
    # a whole prompt that is another's start keeps one token of its own
    assert prefix_groups([shot, shot + [1]]) == [(len(shot) - 1, [0, 1])]


def _plan_cost(widths, batches, overhead, floor):
    return sum(overhead + max((b - a) * widths[b - 1], floor) for a, b in batches)


def _best_cost(widths, max_rows, overhead, floor):
    """Every way of cutting, by brute force."""
    import itertools

    n, best = len(widths), float("inf")
    for cuts in itertools.product([0, 1], repeat=n - 1):
        edges = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        batches = list(zip(edges, edges[1:]))
        if all(b - a <= max_rows(widths[b - 1]) for a, b in batches):
            best = min(best, _plan_cost(widths, batches, overhead, floor))
    return best


def test_scoring_batches_are_the_cheapest_cut_that_fits():
    import random

    rnd = random.Random(0)
    for trial in range(30):
        widths = sorted(rnd.choice([rnd.randint(5, 40), rnd.randint(40, 400)]) for _ in range(rnd.randint(1, 11)))
        cap = rnd.randint(1, 6)

        def max_rows(w):
            return max(1, cap * 100 // w)

        overhead, floor = rnd.choice([(0, 0), (16, 64), (256, 2048)])
        batches = plan_batches(widths, max_rows, overhead, floor)
        assert [a for a, _ in batches] == [0] + [b for _, b in batches[:-1]] and batches[-1][1] == len(widths)
        assert all(b - a <= max_rows(widths[b - 1]) for a, b in batches)
        assert _plan_cost(widths, batches, overhead, floor) == _best_cost(widths, max_rows, overhead, floor)
    # skewed lengths: the long tail gets batches of its own instead of padding the short rows
    widths = [60] * 90 + [900] * 10
    batches = plan_batches(widths, lambda w: 256)
    assert batches == [(0, 90), (90, 100)]
    with pytest.raises(AssertionError):
        plan_batches([3, 1], lambda w: 8)


def test_split_attention_merges_to_whole_attention():
    """Prefix part + causal own part, merged through their log-sum-exps, is attention over both at once."""
    from lab.prefix import attention_by_definition, attention_with_lse

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) for n in (5, 12, 12))
    for causal in (False, True):
        kq, kv_ = (k, v) if not causal else (k[:, :, :5], v[:, :, :5])
        o, lse = attention_with_lse(q, kq, kv_, 0.25, causal)
        o_ref, lse_ref = attention_by_definition(q, kq, kv_, 0.25, causal)
        assert torch.allclose(o, o_ref, atol=1e-5) and torch.allclose(lse, lse_ref, atol=1e-5)
    # 12 prefix keys seen by all, then 5 own tokens causally: the merge equals one masked attention
    own_k, own_v = torch.randn(2, 3, 5, 16, generator=g), torch.randn(2, 3, 5, 16, generator=g)
    o1, l1 = attention_with_lse(q, k, v, 0.25, False)
    o2, l2 = attention_with_lse(q, own_k, own_v, 0.25, True)
    top = torch.maximum(l1, l2)
    w1, w2 = (l1 - top).exp()[..., None], (l2 - top).exp()[..., None]
    merged = (o1 * w1 + o2 * w2) / (w1 + w2)
    mask = torch.ones(5, 17, dtype=torch.bool)
    mask[:, 12:] = torch.ones(5, 5, dtype=torch.bool).tril()
    whole = torch.nn.functional.scaled_dot_product_attention(q, torch.cat([k, own_k], 2), torch.cat([v, own_v], 2),
                                                             attn_mask=mask, scale=0.25)
    assert torch.allclose(merged, whole, atol=1e-5)


def test_suffix_forward_equals_transformers_forward_over_copied_prefix(tiny):
    from lab.prefix import PrefixScorer

    scorer = PrefixScorer(tiny.model, tiny.pad_id)
    assert scorer.own
    prefix = tiny.encode("Answer with one letter. Question: which is a river? A. Nile B. Alps\nAnswer: A\n\n" * 3)
    suffixes = [tiny.encode(t) for t in ("Question: 2+2? A. 4 B. 5\nAnswer:", "Q: sky? A. blue\nAnswer:",
                                         "Question: the longest of these rows, with a few more words?\nAnswer:")]
    with torch.inference_mode():
        kv = scorer.prefix_kv(prefix)
        ours = scorer.next_logprobs(kv, len(prefix), suffixes)
        scorer.own = False
        theirs = scorer.next_logprobs(kv, len(prefix), suffixes)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


@pytest.mark.slow
def test_shared_prefix_scores_equal_whole_prompt_scores(tiny, data_dir, tmp_path):
    from lab.eval.runner import EvalRequest, Runner
    from lab.eval.store import RunStore

    req = EvalRequest("mmlu", subjects=["anatomy", "astronomy"], limit=24, shots=5, seed=3)
    plan = Runner(RunStore.open(tmp_path)).plan(req)
    prompts = [it.prompt for it in plan.items]
    letters = [" A", " B", " C", " D"]
    assert any(n for n, idx in prefix_groups([tiny.encode(p) for p in prompts]) if len(idx) > 1)
    got = torch.tensor(tiny.score_choices(prompts, letters, batch_size=5))
    rows = [(ctx, [c[0] for c in conts]) for ctx, conts in tiny._split_choices(prompts, letters)]
    want = torch.tensor([tiny._forward_last([ctx], keep=1)[0, -1, cands].tolist() for ctx, cands in rows])
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_compare_rows_through_the_fast_path_match_generate(tiny, monkeypatch):
    """On CUDA `stream_many` decodes through lab.fast with each row's settings in the graph; here the same
    code runs eagerly on the CPU and must give what the batched generate() path gives for greedy rows."""
    prompts = [[{"role": "user", "content": q}] for q in ("Name a colour.", "Count to five, slowly please.")]
    params = [SamplingParams(temperature=0, repetition_penalty=1.2, max_new_tokens=12),
              SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=6)]

    def texts() -> list[str]:
        out = ["", ""]
        for row, chunk in tiny.stream_many(prompts, params):
            out[row] += chunk.text
        return out

    plain = texts()
    monkeypatch.setattr(tiny, "fast_off_reason", None)
    monkeypatch.setattr(tiny, "_fast", None)
    calls = []
    monkeypatch.setattr(tiny.model, "generate", lambda *a, **k: calls.append(1))
    assert texts() == plain and not calls


@pytest.mark.parametrize("benchmark", ["mmlu", "ceval"])
def test_continuations_from_the_last_line_equal_whole_text_encoding(tiny, data_dir, tmp_path, benchmark):
    from lab.eval.runner import EvalRequest, Runner
    from lab.eval.store import RunStore

    items = Runner(RunStore.open(tmp_path)).plan(EvalRequest(benchmark, shots=5, limit=300, seed=5)).items
    prompts = [it.prompt for it in items]
    letters = [" A", " B", " C", " D"]
    got = tiny._split_choices(prompts, letters)
    for p, (ctx, conts) in zip(prompts, got):
        assert ctx == tiny.encode(p.rstrip(" "))
        assert conts == [tiny.encode(p + c.lstrip(" ") if p.endswith(" ") else p + c)[len(ctx):] for c in letters]


def test_clearing_the_fast_path_lets_the_decoders_go(tiny):
    import gc
    import weakref

    path = fast.FastPath(tiny.model, tiny.eos_ids, tiny.pad_id, keep=1)
    first = weakref.ref(path.decoder(1, 64))
    second = weakref.ref(path.decoder(2, 64))  # the oldest shape is evicted: keep=1
    gc.collect()
    assert first() is None and second() is not None
    path.clear()
    gc.collect()
    assert second() is None


@pytest.fixture
def fast_tiny(tiny, monkeypatch):
    """tiny-random with the fast path switched on, as on CUDA (here without graphs), and generate() banned."""
    monkeypatch.setattr(tiny, "fast_off_reason", None)
    monkeypatch.setattr(tiny, "_fast", None)

    def banned(*args, **kwargs):
        raise AssertionError("the fast path must not fall back to generate()")

    monkeypatch.setattr(tiny.model, "generate", banned)
    yield tiny
    if tiny._fast is not None:
        tiny._fast.clear()


ASK = [{"role": "user", "content": "Describe a student as JSON with a name and a list of integer scores."}]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"},
                                           "scores": {"type": "array", "items": {"type": "integer"}}},
          "required": ["name", "scores"]}


def test_json_mode_through_the_fast_path_parses_and_validates(fast_tiny):
    import json

    from lab.structured import response_format, validate

    fmt = response_format(True, json.dumps(SCHEMA))
    for seed in range(3):
        chunks = list(fast_tiny.stream_chat(ASK, SamplingParams(seed=seed, max_new_tokens=96, response_format=fmt)))
        text = "".join(c.text for c in chunks)
        assert validate(text, fmt).valid, text
    small = list(fast_tiny.stream_chat(ASK, SamplingParams(seed=1, max_new_tokens=40, response_format=fmt)))
    assert validate("".join(c.text for c in small), fmt).valid and small[-1].stats.closed_early
    for out in fast_tiny.generate([ASK, ASK + [{"role": "user", "content": "again"}]],
                                  SamplingParams(temperature=0, max_new_tokens=96, response_format=fmt)):
        assert validate(out.text, fmt).valid, out.text


def test_page_replies_through_the_fast_path_count_stop_and_cancel(fast_tiny):
    import threading

    params = SamplingParams(max_new_tokens=24, seed=3, ignore_eos=True)  # the page's sampling defaults
    chunks = list(fast_tiny.stream_chat(ASK, params))
    stats = chunks[-1].stats
    assert stats.completion_tokens == 24 and stats.finish_reason == "length" and stats.ttft_s > 0
    assert "".join(c.text for c in chunks) == "".join(c.text for c in fast_tiny.stream_chat(ASK, params))  # seeded
    cancel = threading.Event()
    stream = fast_tiny.stream_chat(ASK, SamplingParams(max_new_tokens=2000, seed=3, ignore_eos=True), cancel)
    next(stream)
    cancel.set()
    stats = [c.stats for c in stream if c.stats][0]
    assert stats.finish_reason == "cancelled" and stats.completion_tokens < 2000


def test_float32_twin_is_the_model_itself_in_float32(tiny):
    """The bench's reference for 16-bit decoders (`float32_twin_logits`) copies every weight and buffer:
    for a float32 model it gives the model's own logits; for a bf16 model, the logits of its bf16 weights
    in float32 arithmetic, which its own bf16 logits only approximate."""
    import copy

    from lab.bench.fast import float32_twin_logits

    seq = tiny.encode(tiny.render([{"role": "user", "content": "Name three rivers of Europe."}])) + [11]
    want = plain_logits(tiny, seq[:-1])
    assert torch.allclose(float32_twin_logits(tiny.model, seq), want, atol=1e-5, rtol=1e-5)
    half = copy.deepcopy(tiny.model).to(torch.bfloat16)
    with torch.no_grad():
        own = half(torch.tensor([seq[:-1]])).logits[0].float()
    twin = float32_twin_logits(half, seq)
    rounded = copy.deepcopy(tiny.model)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).float())
        exact = rounded(torch.tensor([seq[:-1]])).logits[0].float()
    assert torch.allclose(twin, exact, atol=1e-5, rtol=1e-5)
    assert (own - exact).norm() > 10 * (twin - exact).norm()


@pytest.mark.parametrize("widths", [(), (32,)], ids=["model-forward", "prompt-step"])
def test_static_decoder_keeps_qwen3_per_head_norms(widths):
    """Qwen3 normalises each query and key head before rotary (`q_norm`, `k_norm`); the decode and prompt
    steps must too. A small random Qwen3, float32, teacher-forced against its own forward pass."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # norms away from 1, so leaving them out would show
            layer.self_attn.q_norm.weight.uniform_(0.2, 3.0)
            layer.self_attn.k_norm.weight.uniform_(0.2, 3.0)
    assert fast.supported(model) is None
    ids = torch.randint(0, 300, (30,)).tolist()
    prompt, forced = ids[:20], ids[20:]
    got = teacher_forced(fast.StaticDecoder(model, batch=1, max_len=64, graphs=False, prompt_widths=widths),
                         [prompt], [forced])[0]
    with torch.no_grad():
        want = model(torch.tensor([ids[:-1]])).logits[0, len(prompt) - 1:].float()
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
