"""Summaries and tables from a run's samples; the same numbers on the CLI, the page and exports.

Averages, named wherever a number is shown:
- micro: correct / questions, every question counts once (the "overall" accuracy);
- macro: the mean of the per-subject accuracies, every subject counts once.

Text from a run (a completion, a file name) can hold what a terminal or a page cannot show as itself: a
lone surrogate (a UTF-8 stdout refuses it), NUL and other control characters. `escape` writes those as
Python writes them in a literal (\\ud800, \\x00); `one_line` and `block` also cut long text, saying so.
The store keeps the text whole; only what is shown is escaped. `json_text` writes JSON any UTF-8 file
can hold: json.dumps(ensure_ascii=False) leaves a lone surrogate raw, so it is written as its \\u escape,
which json.loads reads back as the same character.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Sequence

from lab.eval.store import Run, Sample

# C0 and C1 controls, DEL, lone surrogates, and the line and paragraph separators that end lines on some screens.
UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
SURROGATE = re.compile("[\ud800-\udfff]")
SHOWN_CHARS = 100_000  # a field shown in full on the page up to this many characters; the store and exports keep all

AVERAGES = "micro = correct / questions (each question once); macro = mean of subject accuracies (each subject once)"


# ---- showing text -----------------------------------------------------------------------
def escape(text: str | None, keep: str = "\n\t") -> str:
    """`text` with each character that cannot be shown as itself (but those in `keep`) as its Python escape."""
    return UNSHOWABLE.sub(lambda m: m.group() if m.group() in keep else repr(m.group())[1:-1], text or "")


def one_line(text: str | None, width: int) -> str:
    """For a table cell: whitespace runs as one space, escaped, cut to `width` with an ellipsis."""
    text = escape(" ".join((text or "").split()), keep="")
    return text if len(text) <= width else text[: width - 1] + "…"


def block(text: str | None, limit: int = SHOWN_CHARS) -> str:
    """For a text pane: escaped (lines kept), cut after `limit` characters with a note of how much was left out."""
    text = text or ""
    if len(text) <= limit:
        return escape(text)
    return (escape(text[:limit]) + f"\n[… {len(text) - limit:,} more characters not shown; "
            "`python -m lab.eval export RUN_ID` writes the whole text]")


def json_text(value, **kw) -> str:
    """json.dumps with ensure_ascii=False that every UTF-8 file can hold (module docstring)."""
    return SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False, **kw))


# ---- text tables ------------------------------------------------------------------------
def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def table(headers: Sequence[str], rows: Sequence[Sequence], align: str | None = None) -> str:
    cells = [[escape(str(c), keep="") for c in headers]] + [[escape(str(c), keep="") for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(r):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip()
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def summary_text(run: Run, summary: dict, subjects: bool = False) -> str:
    return escape(_summary_text(run, summary, subjects))


def _summary_text(run: Run, summary: dict, subjects: bool) -> str:
    head = f"{run.id}  {run.benchmark}{'/' + run.subset if run.subset else ''}  mode={run.mode}"
    if run.shots is not None:
        head += f"  shots={run.shots}"
    head += f"  model={run.model} ({run.quant})  status={run.status}"
    if run.ended_at:
        head += f"  {run.ended_at - run.started_at:.1f} s"
    if "pass@1" in summary["overall"]:
        o = summary["overall"]
        rows = [[k, f"{o[k]:.3f}"] for k in ("pass@1", "pass@10", "pass@100") if k in o]
        stats = ", ".join(f"{k} {v}" for k, v in sorted(summary["statuses"].items()))
        return (f"{head}\n{table(['metric', 'value'], rows)}\n{o['passed']}/{o['samples']} programs passed "
                f"over {o['tasks']} tasks ({stats}); {summary['averages']}.")
    o = summary["overall"]
    rows = [["overall", o["n"], pct(o["accuracy"]), pct(o["macro"])]]
    rows += [[g, b["n"], pct(b["accuracy"]), pct(b["macro"])] for g, b in summary["groups"].items()]
    text = f"{head}\n{table(['group', 'questions', 'micro %', 'macro %'], rows)}"
    if subjects:
        srows = [[name, s["n"], pct(s["accuracy"])] for name, s in summary["subjects"].items()]
        text += "\n\n" + table(["subject", "questions", "accuracy %"], srows)
    return text + f"\n{o['unparseable']} unparseable answers (counted wrong). {AVERAGES}."


def run_delta(run_a: Run, samples_a: Sequence[Sample], run_b: Run, samples_b: Sequence[Sample]) -> dict:
    """B minus A, overall and per subject, on the samples both runs hold; and the samples that flipped."""
    a = {s.key: s for s in samples_a}
    b = {s.key: s for s in samples_b}
    shared = sorted(set(a) & set(b), key=lambda k: a[k].position)
    subjects: dict[str, list[str]] = defaultdict(list)
    for k in shared:
        subjects[a[k].subject or ""].append(k)

    def acc(side: dict, keys: list[str]) -> float | None:
        return _mean(side[k].correct for k in keys)

    per_subject = {name: {"n": len(keys), "a": acc(a, keys), "b": acc(b, keys), "delta": acc(b, keys) - acc(a, keys)}
                   for name, keys in sorted(subjects.items())}
    flips = [{"key": k, "subject": a[k].subject, "a": a[k].extracted, "b": b[k].extracted, "gold": a[k].gold,
              "now": "right" if b[k].correct else "wrong"} for k in shared if a[k].correct != b[k].correct]
    acc_a, acc_b = acc(a, shared), acc(b, shared)
    return {
        "a": run_a.id, "b": run_b.id, "shared": len(shared),
        "only_a": len(set(a) - set(b)), "only_b": len(set(b) - set(a)),
        "overall": {"a": acc_a, "b": acc_b, "delta": None if acc_a is None else acc_b - acc_a},
        "subjects": per_subject, "flipped": flips,
        "gained": sum(f["now"] == "right" for f in flips), "lost": sum(f["now"] == "wrong" for f in flips),
    }


def delta_text(cmp: dict, run_a: Run, run_b: Run, max_flips: int = 20) -> str:
    return escape(_delta_text(cmp, run_a, run_b, max_flips))


def _delta_text(cmp: dict, run_a: Run, run_b: Run, max_flips: int) -> str:
    o = cmp["overall"]
    lines = [f"A = {run_a.label}", f"B = {run_b.label}",
             f"{cmp['shared']} samples in both runs (only A: {cmp['only_a']}, only B: {cmp['only_b']})", ""]
    rows = [["overall", cmp["shared"], pct(o["a"]), pct(o["b"]), _signed(o["delta"])]]
    rows += [[name, s["n"], pct(s["a"]), pct(s["b"]), _signed(s["delta"])] for name, s in cmp["subjects"].items()]
    lines.append(table(["subject", "n", "A %", "B %", "B-A pts"], rows))
    lines.append(f"\n{len(cmp['flipped'])} samples flipped: {cmp['gained']} now right, {cmp['lost']} now wrong")
    for f in cmp["flipped"][:max_flips]:
        a, b, gold = (one_line(str(x), 60) for x in (f["a"], f["b"], f["gold"]))
        lines.append(f"  {one_line(f['key'], 60)}: A={a} B={b} gold={gold} -> {f['now']}")
    if len(cmp["flipped"]) > max_flips:
        lines.append(f"  ... {len(cmp['flipped']) - max_flips} more (export the runs for all of them)")
    return "\n".join(lines)


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None



def _signed(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.1f}"
