"""The multiple-choice kind, shared by MMLU and C-Eval: build prompts, extract a letter, score.

Pure functions: no I/O, no model calls; the runner feeds them rows and model outputs.

logprob mode: `header`, then k solved examples from the dev split, then the question ending in
"Answer:" (C-Eval: "答案："). The model is scored on the log-probability of each letter at the next
position, one forward pass per question. The letter is scored with a leading space (" A"): " A"
and "A" are different tokens, and the few-shot answers are written the same way.

gen mode: a chat turn built from `gen_user`; the model answers freely and `extract_letter` reads the
letter from its reply (rule in its docstring). No letter found means "unparseable", counted wrong.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

from lab.eval.data import Question

LETTER_SEP = " "  # between "Answer:" and the letter, in shots and in the scored continuation


def format_options(options: Sequence[str], letters: Sequence[str]) -> str:
    return "\n".join(f"{letter}. {str(text).strip()}" for letter, text in zip(letters, options))


def render_question(q: Question, template: dict, letters: Sequence[str]) -> str:
    return template["question"].format(question=q.question.strip(), options=format_options(q.options, letters))


def logprob_prompt(q: Question, shots: Sequence[Question], subject_name: str, template: dict,
                   letters: Sequence[str]) -> str:
    """The full k-shot prompt; the model continues it with one of `continuations(letters)`."""
    parts = [template["header"].format(subject=subject_name)]
    for s in shots:
        parts.append(render_question(s, template, letters) + LETTER_SEP + s.answer + "\n\n")
    parts.append(render_question(q, template, letters))
    return "".join(parts)


def continuations(letters: Sequence[str]) -> list[str]:
    return [LETTER_SEP + letter for letter in letters]


def gen_messages(q: Question, shots: Sequence[Question], subject_name: str, template: dict,
                 letters: Sequence[str]) -> list[dict]:
    """Chat messages for gen mode; shots become earlier turns answered as "Answer: X" (答案：X)."""
    messages = [{"role": "system", "content": template["gen_system"]}] if template.get("gen_system") else []
    answer_word = "答案：" if "答案" in template["question"] else "Answer: "
    for s in shots:
        messages.append({"role": "user", "content": _gen_user(s, subject_name, template, letters)})
        messages.append({"role": "assistant", "content": answer_word + s.answer})
    messages.append({"role": "user", "content": _gen_user(q, subject_name, template, letters)})
    return messages


def _gen_user(q: Question, subject_name: str, template: dict, letters: Sequence[str]) -> str:
    return template["gen_user"].format(subject=subject_name, question=q.question.strip(),
                                       options=format_options(q.options, letters))


# ---- extraction (gen mode) --------------------------------------------------------------
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
