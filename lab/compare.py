"""Compare prompts: two to four *variants* (system prompt, a template with an `{input}` slot, sampling
settings) answer one input together, side by side; no Gradio here.

    variants = parse_variants([{"name": "terse", "system": "Concise", "temperature": 0},
                               {"name": "story", "template": "Answer as a story: {input}"}])
    for panes in run_variants(model, "Why is the sky blue?", variants):
        print([p.text for p in panes])             # every pane grows as its tokens arrive
    word_diff_html(panes[0].text, panes[1].text)   # insertions and deletions marked
    save_set("mine", variants); load_set("mine")   # prompts/compare/mine.yaml
    bench_variants(model, variants, "mmlu", limit=20)   # one saved evaluation run per variant

Variants on one model are generated together in one batched generation (`ChatModel.stream_many`),
so every pane streams at once. A variant's `system` is free text or the name of a preset of
prompts/system.yaml; `template` defaults to "{input}" (the input as it is).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import hashlib
import html
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import yaml

from lab import __version__
from lab.backend import Message, ReplyStats, SamplingParams
from lab.errors import LabError
from lab.prompts import prompts_dir, system_presets

MIN_PANES, MAX_PANES = 2, 4
SLOT = "{input}"
SAMPLING = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed")
DEFAULTS = SamplingParams()
BENCH_MODES = {"choice": "gen", "code": "instruct"}  # the benchmark modes whose prompts are chat messages


@dataclass
class Variant:
    """One pane's prompt and sampling settings."""

    name: str
    system: str = ""  # "" sends no system turn (the chat template may add its own)
    template: str = SLOT
    temperature: float = DEFAULTS.temperature
    top_p: float = DEFAULTS.top_p
    top_k: int = DEFAULTS.top_k
    repetition_penalty: float = DEFAULTS.repetition_penalty
    max_new_tokens: int = DEFAULTS.max_new_tokens
    seed: int | None = None
    preset: str | None = None  # the preset the system prompt came from, if any (for the record)

    def params(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              repetition_penalty=self.repetition_penalty, max_new_tokens=self.max_new_tokens,
                              seed=self.seed)

    def prompt(self, user_input: str) -> str:
        return self.template.replace(SLOT, user_input)  # not str.format: inputs are full of braces

    def messages(self, user_input: str) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system.strip() else []
        return head + [{"role": "user", "content": self.prompt(user_input)}]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["preset"] is None:
            del d["preset"]
        return d

    @property
    def fingerprint(self) -> str:
        """Six hex digits that change when the prompt or the sampling changes (the name does not count)."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("name", "preset")}
        return hashlib.sha1(json.dumps(d, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:6]

    @property
    def key(self) -> str:
        """How the vote tally names this variant: its name and its fingerprint."""
        return f"{self.name} #{self.fingerprint}"


def variant_from_dict(d: object, index: int, presets: dict[str, str] | None = None) -> Variant:
    """A checked variant from a mapping (a YAML entry, a program's JSON, the page's form)."""
    where = f"Variant {index + 1}"
    if not isinstance(d, dict):
        raise LabError(f"{where} must be an object with a name, system, template and sampling settings.")
    known = {f.name for f in dataclasses.fields(Variant)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise LabError(f"{where} has unknown setting(s) {', '.join(unknown)}; use {', '.join(sorted(known))}.")
    name = str(d.get("name") or "").strip() or chr(ord("A") + index)
    where = f"Variant '{name}'"
    presets = system_presets() if presets is None else presets
    system, preset = d.get("system"), d.get("preset") or None
    if preset is not None and preset not in presets:
        raise LabError(f"{where} names the preset '{preset}', which prompts/system.yaml does not have.")
    if system is None:
        system = presets[preset] if preset else ""
    if not isinstance(system, str):
        raise LabError(f"{where} needs its system prompt as text.")
    if system in presets:  # a preset's name stands for its text
        system, preset = presets[system], system
    if preset and system.strip() != presets[preset].strip():
        preset = None  # edited after it was picked: it is free text now
    template = d.get("template")
    template = SLOT if template is None or template == "" else template
    if not isinstance(template, str) or SLOT not in template:
        raise LabError(f"{where} has a template without an {SLOT} slot; add {SLOT} where the input goes.")
    values = {}
    try:
        for k in SAMPLING:
            v = d.get(k)
            if v is None or v == "":
                values[k] = None if k == "seed" else getattr(DEFAULTS, k)
            elif isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise ValueError(f"{k} must be a number, got {v!r}")
            elif k in ("top_k", "max_new_tokens", "seed"):
                if float(v) != int(float(v)):
                    raise ValueError(f"{k} must be a whole number, got {v}")
                values[k] = int(float(v))
            else:
                values[k] = float(v)
        if values["seed"] is not None and values["seed"] < 0:
            values["seed"] = None  # -1: a fresh seed each run
        variant = Variant(name=name, system=system.strip(), template=template, preset=preset, **values)
        variant.params()  # SamplingParams checks the ranges
    except ValueError as e:
        raise LabError(f"{where} has an invalid sampling setting: {e}.") from None
    return variant


def parse_variants(items: object, presets: dict[str, str] | None = None) -> list[Variant]:
    """Two to four checked variants with distinct names, from a list of mappings or its JSON text."""
    if isinstance(items, str):
        try:
            items = json.loads(items) if items.strip() else []
        except json.JSONDecodeError as e:
            raise LabError(f"The variants are not valid JSON ({e.msg} at character {e.pos}).") from None
    if not isinstance(items, list):
        raise LabError('The variants must be a list of objects like {"name": "A", "system": "...", '
                       '"template": "{input}"}.')
    if not MIN_PANES <= len(items) <= MAX_PANES:
        raise LabError(f"Compare takes {MIN_PANES} to {MAX_PANES} variants, not {len(items)}.")
    presets = system_presets() if presets is None else presets
    variants = [v if isinstance(v, Variant) else variant_from_dict(v, i, presets) for i, v in enumerate(items)]
    names = [v.name for v in variants]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise LabError(f"Two variants are named '{twice[0]}'; give each variant its own name.")
    return variants


def check_input(user_input: str | None) -> str:
    if not user_input or not user_input.strip():
        raise LabError("The input is empty; type what every variant should answer.")
    return user_input


# ---- running ----------------------------------------------------------------------------
@dataclass
class Pane:
    """One variant's reply so far; `stats` arrives with its last token."""

    text: str = ""
    stats: ReplyStats | None = None


def run_variants(model, user_input: str, variants: Sequence[Variant],
                 cancel: threading.Event | None = None) -> Iterator[list[Pane]]:
    """Every variant answers `user_input` in one batched generation; yields the panes after each arrival
    (the same list, updated in place), the last time with every pane's stats."""
    check_input(user_input)
    variants = parse_variants(list(variants))
    panes = [Pane() for _ in variants]
    stream = model.stream_many([v.messages(user_input) for v in variants], [v.params() for v in variants], cancel)
    try:
        for row, chunk in stream:
            panes[row].text += chunk.text
            panes[row].stats = chunk.stats or panes[row].stats
            yield panes
    finally:
        if hasattr(stream, "close"):
            stream.close()  # a consumer that leaves early ends the generation at once


@dataclass
class Comparison:
    """One input answered by every variant: what the page keeps, exports and records with a vote."""

    input: str
    variants: list[Variant]
    outputs: list[str]
    stats: list[dict | None]
    model: dict | None = None
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    order: list[int] | None = None  # blind mode: the variant shown in each pane, by pane
    vote: int | None = None  # the winning variant's index; None with voted=True is a tie
    voted: bool = False

    @classmethod
    def from_panes(cls, user_input: str, variants: Sequence[Variant], panes: Sequence[Pane], model_info=None,
                   order: Sequence[int] | None = None) -> "Comparison":
        return cls(user_input, list(variants), [p.text for p in panes],
                   [p.stats.to_dict() if p.stats else None for p in panes],
                   model_info.to_dict() if model_info else None, order=list(order) if order else None)

    @property
    def verdict(self) -> str:
        if not self.voted:
            return "no vote"
        return "tie" if self.vote is None else f"{self.variants[self.vote].name} wins"

    def to_dict(self) -> dict:
        return {
            "format": "qwen-lab.compare/1",
            "app_version": __version__,
            "created_at": self.created_at,
            "model": self.model,
            "input": self.input,
            "variants": [{**v.to_dict(), "key": v.key, "output": out, "stats": s}
                         for v, out, s in zip(self.variants, self.outputs, self.stats)],
            "blind_order": self.order,
            "vote": None if not self.voted else ("tie" if self.vote is None else self.variants[self.vote].name),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)

    def to_markdown(self) -> str:
        from lab.chat import format_stats

        model = (self.model or {}).get("name", "unknown model")
        lines = [f"# Comparison of {len(self.variants)} variants", "",
                 f"- model: {model}", f"- time: {self.created_at}", f"- vote: {self.verdict}", "",
                 "## Input", "", _fence(self.input), "", "## Variants", "",
                 "| variant | system prompt | template | " + " | ".join(SAMPLING) + " |",
                 "|" + " --- |" * (3 + len(SAMPLING))]
        for v in self.variants:
            cells = [v.key, v.system or "(none)", v.template] + [str(getattr(v, k)) for k in SAMPLING]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        for v, out, s in zip(self.variants, self.outputs, self.stats):
            lines += ["", f"## {v.name}", ""]
            if s:
                lines += [f"*{format_stats(s)}*", ""]
            lines.append(_fence(out))
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return html.escape(text).replace("|", "\\|").replace("\n", "<br>")


def _fence(text: str) -> str:
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"{ticks}text\n{text}\n{ticks}"


# ---- diff -------------------------------------------------------------------------------
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


# ---- variant sets as YAML -----------------------------------------------------------------
_SET_NAME = re.compile(r"^[\w][\w .-]{0,63}$")


def sets_dir() -> Path:
    return prompts_dir() / "compare"


def list_sets() -> list[str]:
    d = sets_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _set_path(name: str) -> Path:
    name = (name or "").strip()
    if not _SET_NAME.match(name) or name.endswith("."):
        raise LabError("Name the variant set with letters, digits, spaces, '-', '_' or '.' (at most 64), "
                       f"not '{name}'.")
    return sets_dir() / f"{name}.yaml"


def save_set(name: str, variants: Sequence[Variant], description: str = "") -> Path:
    """Write the variants to prompts/compare/<name>.yaml (replacing a set of that name)."""
    path = _set_path(name)
    variants = parse_variants(list(variants))
    data = {"description": description or f"{len(variants)} variants", "variants": []}
    for v in variants:
        d = v.to_dict()
        if v.preset:
            d["system"] = v.preset  # the preset's name keeps the file short and follows edits to the preset
        if d["seed"] is None:
            del d["seed"]
        data["variants"].append(d)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100), encoding="utf-8")
    except OSError as e:
        raise LabError(f"The variant set cannot be written to {path} ({e.strerror or e}).") from None
    return path


def load_set(name: str) -> tuple[str, list[Variant]]:
    """(description, variants) of prompts/compare/<name>.yaml."""
    path = _set_path(name)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(f"There is no variant set '{name}' in {sets_dir()}.") from None
    except yaml.YAMLError as e:
        raise LabError(f"The variant set {path} is not valid YAML ({str(e).splitlines()[0]}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("variants"), list):
        raise LabError(f"The variant set {path} needs a list under 'variants'.")
    return str(data.get("description") or ""), parse_variants(data["variants"])


# ---- variants on a benchmark ----------------------------------------------------------------
@dataclass
class BenchRow:
    variant: Variant
    run_id: str
    status: str
    summary: dict

    @property
    def score(self) -> float | None:
        overall = self.summary.get("overall", {})
        return overall.get("accuracy", overall.get("pass@1"))


BENCH_HEADERS = ["variant", "accuracy %", "correct", "items", "unparseable", "status", "run id"]


def bench_requests(variants: Sequence[Variant], benchmark: str, limit: int = 20, seed: int | None = None,
                   max_new_tokens: int | None = None, data_dir: str | None = None) -> list:
    """One evaluation request per variant: its system prompt and template on the same seeded items, greedy."""
    from lab.eval.runner import DEFAULT_SEED, EvalRequest
    from lab.eval.spec import load_spec

    spec = load_spec(benchmark)
    if limit is None or limit < 1:
        raise LabError(f"Give a limit of at least 1 item, got {limit}; variants on a whole benchmark take hours.")
    return [EvalRequest(benchmark=spec.name, mode=BENCH_MODES[spec.kind], shots=0 if spec.kind == "choice" else None,
                        limit=int(limit), seed=DEFAULT_SEED if seed is None else int(seed),
                        max_new_tokens=max_new_tokens, data_dir=data_dir,
                        system=v.system or None, template=None if v.template == SLOT else v.template)
            for v in variants]


def bench_variants(model, variants: Sequence[Variant], benchmark: str, limit: int = 20, seed: int | None = None,
                   max_new_tokens: int | None = None, store=None, data_dir: str | None = None,
                   on_progress: Callable[[int, object], None] | None = None,
                   cancel: threading.Event | None = None) -> list[BenchRow]:
    """Run every variant over the same seeded slice of a benchmark (MMLU or C-Eval in gen mode, HumanEval in
    instruct mode), one saved run each, in the run history the Evaluate tab shows."""
    from lab.eval.runner import Runner
    from lab.eval.store import RunStore

    variants = parse_variants(list(variants))
    runner = Runner(store or RunStore.open())
    requests = bench_requests(variants, benchmark, limit, seed, max_new_tokens, data_dir)
    for req in requests:
        runner.plan(req)  # every request is checked before the first run starts
    cancel = cancel or threading.Event()
    rows = []
    for i, (v, req) in enumerate(zip(variants, requests)):
        if cancel.is_set():
            break
        result = runner.run(model, req, (lambda p, i=i: on_progress(i, p)) if on_progress else None, cancel)
        rows.append(BenchRow(v, result.run_id, result.status, result.summary))
    return rows


def bench_table(rows: Sequence[BenchRow]) -> list[list]:
    """The variants side by side: accuracy (HumanEval: pass@1), counts, status and run id."""
    out = []
    for r in rows:
        o = r.summary.get("overall", {})
        n = o.get("n", o.get("samples"))
        correct = o.get("correct", o.get("passed"))
        out.append([r.variant.name, None if r.score is None else round(100 * r.score, 1), correct, n,
                    o.get("unparseable"), r.status, r.run_id])
    return out
