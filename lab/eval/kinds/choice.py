"""The multiple-choice kind (every benchmark whose spec says `kind: choice`): plan the
questions, build their prompts from the spec's templates, read or score the model's answers.

logprob mode: `header`, then k solved examples from the spec's fewshot split, then the question ending in
its cue ("Answer:", "答案："). The model is scored on the log-probability of each letter at the next
position, one forward pass per question. The letter is scored after `target_delimiter` (" A"): " A" and
"A" are different tokens, and the few-shot answers are written the same way.

Text goes into the prompt exactly as the data has it, except the slots the template's `strip` names
("question", "options"), which lose their surrounding whitespace. The shipped defaults strip the question
only, as lm-evaluation-harness does: an option's trailing space stays, and tokenizes differently.
A spec's `templates` are named alternatives (`--template official`); `Spec.prompts_for` resolves one.

gen mode: a chat turn built from `gen_user`; shots become earlier turns answered as `gen_answer`. The model
answers freely and `extract_letter` reads the letter from its reply (rule in its docstring). No letter
found means "unparseable", counted wrong.

The prompt builders, `extract_letter` and `pick` are pure: tests feed them literal strings.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections import defaultdict
from typing import Mapping, Sequence

from lab.errors import LabError
from lab.eval import report
from lab.eval.data import Dataset, Question
from lab.eval.plan import EvalRequest, Item, Plan, customize, eval_sampling, numbered, sample_within, spread
from lab.eval.spec import Spec
from lab.eval.store import Sample

MODES = ("logprob", "gen")
CHAT_MODE = "gen"  # the mode whose prompts are chat messages (a variant's system prompt and template apply)
TAKES_SHOTS = True
UNIT = "questions"
RATE = "accuracy"  # what the running score is called while a run goes
SPACE_CAP = 100  # a Hugging Face Space runs at most this many questions at a time
MODE_HELP = "logprob scores the letters; gen lets the model answer"
PROMPT_FIELDS = ("header", "question", "gen_user", "gen_answer")
STRIPPABLE = ("question", "options")
MAX_SHOTS = 5


def check(spec: Spec) -> None:
    for name in [None, *spec.templates]:
        prompts, where = spec.prompts_for(name), f"'templates: {name}'" if name else "'prompts'"
        missing = [f for f in PROMPT_FIELDS if not isinstance(prompts.get(f), str)]
        if missing:
            raise LabError(f"The benchmark spec {spec.path} lacks the prompt template(s) {', '.join(missing)} under "
                           f"{where}; a multiple-choice benchmark needs header, question, gen_user and gen_answer.")
        strip = prompts.get("strip", [])
        if not isinstance(strip, list) or not set(strip) <= set(STRIPPABLE):
            raise LabError(f"The benchmark spec {spec.path} has 'strip: {strip}' under {where}; it lists the slots "
                           f"whose surrounding whitespace goes, of {', '.join(STRIPPABLE)}.")
    if not spec.mapping and not spec.categories:
        raise LabError(f"The benchmark spec {spec.path} needs its subjects' categories: 'categories' (category -> "
                       "subjects) or a 'mapping' file.")


# ---- prompts --------------------------------------------------------------------------------------
def format_options(options: Sequence[str], letters: Sequence[str], strip: bool = False) -> str:
    return "\n".join(f"{letter}. {str(text).strip() if strip else text}" for letter, text in zip(letters, options))


def _slots(q: Question, prompts: dict, letters: Sequence[str]) -> dict:
    """{question} and {options} as the template's `strip` asks."""
    strip = prompts.get("strip", [])
    return {"question": q.question.strip() if "question" in strip else q.question,
            "options": format_options(q.options, letters, "options" in strip)}


def render_question(q: Question, prompts: dict, letters: Sequence[str]) -> str:
    return prompts["question"].format(**_slots(q, prompts, letters))


def logprob_prompt(q: Question, shots: Sequence[Question], subject_name: str, prompts: dict,
                   letters: Sequence[str]) -> str:
    """The full k-shot prompt; the model continues it with one of `continuations(letters)`."""
    sep = prompts.get("target_delimiter", " ")
    parts = [prompts["header"].format(subject=subject_name)]
    for s in shots:
        parts.append(render_question(s, prompts, letters) + sep + s.answer + "\n\n")
    parts.append(render_question(q, prompts, letters))
    return "".join(parts)


def continuations(letters: Sequence[str], prompts: dict | None = None) -> list[str]:
    sep = (prompts or {}).get("target_delimiter", " ")
    return [sep + letter for letter in letters]


def gen_messages(q: Question, shots: Sequence[Question], subject_name: str, prompts: dict,
                 letters: Sequence[str]) -> list[dict]:
    """Chat messages for gen mode; shots become earlier turns answered as `gen_answer` ("Answer: X")."""
    messages = [{"role": "system", "content": prompts["gen_system"]}] if prompts.get("gen_system") else []
    for s in shots:
        messages.append({"role": "user", "content": _gen_user(s, subject_name, prompts, letters)})
        messages.append({"role": "assistant", "content": prompts["gen_answer"].format(answer=s.answer)})
    messages.append({"role": "user", "content": _gen_user(q, subject_name, prompts, letters)})
    return messages


def _gen_user(q: Question, subject_name: str, prompts: dict, letters: Sequence[str]) -> str:
    return prompts["gen_user"].format(subject=subject_name, **_slots(q, prompts, letters))


# ---- extraction (gen mode) --------------------------------------------------------------------------
def _patterns(letters: str) -> list[re.Pattern]:
    """Explicit answer statements, strongest first. Only the word is case-blind: "answer is a" is no letter."""
    L = f"[{letters}]"
    open_ = r"[*(\[（【]*\s*"
    return [
        # "Answer: B", "the answer is (B)", "Final answer: **B**", "The answer to this question is B"
        re.compile(rf"(?i:answer)(?:\s+(?i:to\s+(?:this|the)\s+question))?\s*(?i:is|would\s+be|should\s+be)?"
                   rf"\s*[:：]?\s*{open_}({L})(?![A-Za-z])"),
        # "答案：B", "答案是 B", "正确答案为（B）"
        re.compile(rf"答案\s*(?:是|为|应该是|应为|应选)?\s*[:：]?\s*{open_}({L})(?![A-Za-z])"),
        # "the correct option is C", "选B", "应选择 C"
        re.compile(rf"(?:(?i:option|choice)\s*(?i:is)?|选择|选)\s*[:：]?\s*{open_}({L})(?![A-Za-z])"),
    ]


def extract_letter(reply: str, letters: Sequence[str] = "ABCD", options: Sequence[str] | None = None) -> str | None:
    """The option letter a free-text reply chose, or None when it cannot be told.

    Rule, first that applies (text normalized with NFKC first, so full-width "Ｂ" and "：" count):
    1. the last explicit statement: "Answer: B", "the answer is (B)", "答案：B", "答案是B", "选B";
    2. the reply opens with the letter: "B", "(B)", "B.", "B) because ...", "B、...";
    3. the last line that is only a letter, possibly bold or in brackets: "**B**";
    4. the reply is exactly one option's text.
    Anything else is unparseable (None), never a guess.
    """
    text = unicodedata.normalize("NFKC", reply).strip()
    letters = "".join(letters)
    for pattern in _patterns(letters):
        found = pattern.findall(text)
        if found:
            return found[-1]
    m = re.match(rf"^[*(\[【]*\s*([{letters}])\s*(?:[).:、，,\]】*]|$|\s)", text)
    if m:
        return m.group(1)
    lines = re.findall(rf"^\s*[*(\[【]*\s*([{letters}])\s*[)\]】*.]*\s*$", text, re.MULTILINE)
    if lines:
        return lines[-1]
    if options:
        norm = [unicodedata.normalize("NFKC", str(o)).strip() for o in options]
        hits = [letters[i] for i, o in enumerate(norm) if o and o == text.rstrip("。.")]
        if len(hits) == 1:
            return hits[0]
    return None


def pick(logprobs: Sequence[float], letters: Sequence[str]) -> str:
    """The letter with the highest log-probability; a tie goes to the earlier letter."""
    best = max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
    return letters[best]


# ---- planning -------------------------------------------------------------------------------------------
def groups_of(spec: Spec, ds: Dataset, subjects: list[str]) -> dict[str, list[str]]:
    """Category -> subjects, in the spec's order, then the extra groups (C-Eval Hard)."""
    groups: dict[str, list[str]] = {name: [] for name in spec.category_order or spec.categories}
    for s in subjects:
        for cat in ds.categories(s):
            groups.setdefault(cat, []).append(s)
    groups.update({k: list(v) for k, v in spec.extra_groups.items()})
    return {k: v for k, v in groups.items() if v}


def plan(spec: Spec, ds: Dataset, req: EvalRequest, mode: str) -> Plan:
    shots = spec.default_shots if req.shots is None and mode == "logprob" else (req.shots or 0)
    if not 0 <= shots <= MAX_SHOTS:
        raise LabError(f"Shots must be between 0 and {MAX_SHOTS} (the dev split has {MAX_SHOTS} questions a subject), "
                       f"got {shots}.")
    subjects = ds.subjects()
    groups = groups_of(spec, ds, subjects)
    chosen = subjects
    sub = spec.subset(req.subset) if req.subset else None
    if sub and sub.subjects:
        chosen = [s for s in chosen if s in sub.subjects]
    if sub and sub.categories:
        chosen = [s for s in chosen if set(ds.categories(s)) & set(sub.categories)]
    if req.subjects:
        unknown = [s for s in req.subjects if s not in subjects]
        if unknown:
            raise LabError(f"{spec.title} has no subject {', '.join(unknown)}; its subjects are "
                           f"{', '.join(subjects[:6])}, ... ({len(subjects)} in all; see {spec.path.name}).")
        chosen = [s for s in chosen if s in req.subjects]
    if not chosen:
        raise LabError(f"The subset and subjects chosen leave no {spec.title} subject to run.")
    pools = {s: ds.questions(s, spec.split) for s in chosen}
    if sub and sub.per_subject:
        pools = {s: sample_within(qs, sub.per_subject, req.seed, s) for s, qs in pools.items()}
    limit = req.limit or (sub.limit if sub else None)
    picked = spread(pools, limit, req.seed) if limit else [q for s in chosen for q in pools[s]]
    prompts = spec.prompts_for(req.prompt_template)
    items = []
    for q in picked:
        dev = ds.questions(q.subject, spec.fewshot_split)[:shots] if shots else []
        name = ds.subject_name(q.subject)
        if mode == "logprob":
            prompt = logprob_prompt(q, dev, name, prompts, spec.choices)
        else:
            prompt = customize(gen_messages(q, dev, name, prompts, spec.choices), req)
        items.append(Item(q.key, q.subject, q.answer, q, prompt))
    return Plan(spec, req, mode, shots, numbered(items), ds.source, groups)


# ---- running and scoring ---------------------------------------------------------------------------------
def batch_size(plan: Plan, cuda: bool) -> int:
    """Items per saved batch: on CUDA the model sizes its own forward passes, so slices are large."""
    return (1024 if plan.mode == "logprob" else 256) if cuda else 8


def run_batch(model, plan: Plan, todo: list[Item], seed: int, cancel) -> list[Sample] | None:
    t = time.monotonic()
    letters = plan.spec.choices
    if plan.mode == "logprob":
        prompts = plan.spec.prompts_for(plan.request.prompt_template)
        scores = model.score_choices([it.prompt for it in todo], continuations(letters, prompts),
                                     batch_size=plan.request.batch_size)
        per = (time.monotonic() - t) / len(todo)
        return [score_letters(it, lp, letters, per) for it, lp in zip(todo, scores)]
    texts = [model.render(it.prompt) for it in todo]
    params = eval_sampling(plan.request, seed, 256)
    completions = model.generate(texts, params, cancel=cancel, batch_size=plan.request.batch_size)
    if cancel.is_set():
        return None
    per = (time.monotonic() - t) / len(todo)
    return [score_reply(it, text, c, letters, per) for it, text, c in zip(todo, texts, completions)]


def score_letters(it: Item, logprobs: Sequence[float], letters: Sequence[str], seconds: float) -> Sample:
    pred = pick(logprobs, letters)
    return Sample(it.key, it.position, it.subject, it.prompt, " ".join(f"{x}:{v:.4f}" for x, v in zip(letters, logprobs)),
                  pred, it.gold, pred == it.gold, {"logprobs": dict(zip(letters, logprobs))}, seconds)


def score_reply(it: Item, prompt_text: str, c, letters: Sequence[str], seconds: float) -> Sample:
    q: Question = it.payload
    pred = extract_letter(c.text, letters, q.options)
    return Sample(it.key, it.position, it.subject, prompt_text, c.text, pred, it.gold, pred == it.gold,
                  {"completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason,
                   "unparseable": pred is None}, seconds)


def summarize(samples: Sequence[Sample], groups: Mapping[str, Sequence[str]]) -> dict:
    """Overall, per-group (categories, C-Eval Hard) and per-subject accuracy."""
    by_subject: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_subject[s.subject or ""].append(s)
    subjects = {
        name: {"n": len(rows), "correct": sum(r.correct for r in rows), "accuracy": _mean(r.correct for r in rows)}
        for name, rows in sorted(by_subject.items())
    }

    def block(names: Sequence[str]) -> dict:
        present = [n for n in names if n in subjects]
        n = sum(subjects[x]["n"] for x in present)
        correct = sum(subjects[x]["correct"] for x in present)
        return {"n": n, "correct": correct, "subjects": len(present),
                "accuracy": correct / n if n else None,
                "macro": _mean(subjects[x]["accuracy"] for x in present)}

    overall = block(list(subjects))
    overall["unparseable"] = sum(1 for s in samples if s.extracted is None)
    return {
        "overall": overall,
        "groups": {g: block(names) for g, names in groups.items() if any(x in subjects for x in names)},
        "subjects": subjects,
        "averages": report.AVERAGES,
    }


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None




def export_row(sample: Sample) -> dict:
    return sample.to_dict()
