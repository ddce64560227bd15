"""A word-level diff of two outputs, for the page: words, single CJK characters (Chinese has no spaces) and
punctuation compared, insertions and deletions marked."""

from __future__ import annotations

import difflib
import html
import re

# Words, single CJK characters (Chinese has no spaces), single punctuation marks, runs of whitespace.
_TOKEN = re.compile(r"\s+|[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]|\w+|[^\w\s]")


def diff_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    """(op, text) pieces that turn `a` into `b`: op is "=", "-" (only in a) or "+" (only in b)."""
    ta, tb = diff_tokens(a), diff_tokens(b)
    out: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ta, tb, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(("=", "".join(ta[i1:i2])))
        if op in ("delete", "replace"):
            out.append(("-", "".join(ta[i1:i2])))
        if op in ("insert", "replace"):
            out.append(("+", "".join(tb[j1:j2])))
    return out


def word_diff_html(a: str, b: str, label_a: str = "A", label_b: str = "B") -> str:
    """The word-level diff as HTML: text only in `a` struck through in red, only in `b` underlined in green."""
    pieces = word_diff(a, b)
    ta, tb = diff_tokens(a), diff_tokens(b)
    words = lambda toks: sum(1 for t in toks if not t.isspace())  # noqa: E731
    removed = sum(words(diff_tokens(t)) for op, t in pieces if op == "-")
    added = sum(words(diff_tokens(t)) for op, t in pieces if op == "+")
    ratio = difflib.SequenceMatcher(None, ta, tb, autojunk=False).ratio() if ta or tb else 1.0
    body = []
    for op, text in pieces:
        t = html.escape(text)
        if op == "-":
            body.append(f'<del class="cmp-del" style="background:#fde2e2;color:#a61b1b">{t}</del>')
        elif op == "+":
            body.append(f'<ins class="cmp-ins" style="background:#dcf5dc;color:#17612a">{t}</ins>')
        else:
            body.append(t)
    head = (f"<p><del style=\"background:#fde2e2\">{html.escape(label_a)}</del> → "
            f"<ins style=\"background:#dcf5dc\">{html.escape(label_b)}</ins>: {_words(removed)} removed, "
            f"{_words(added)} added, {100 * ratio:.0f}% the same</p>")
    return f'<div class="cmp-diff">{head}<div style="white-space:pre-wrap;line-height:1.6">{"".join(body)}</div></div>'


def _words(n: int) -> str:
    return f"{n} word{'' if n == 1 else 's'}"
