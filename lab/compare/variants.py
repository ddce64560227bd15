"""A Compare variant: a system prompt (free text, or a preset of prompts/system.yaml), a template with an
`{input}` slot, and its own sampling settings; checked from whatever shape it comes in (YAML, a program's
JSON, the page's form), each problem one sentence.

    variants = parse_variants([{"name": "terse", "system": "Concise", "temperature": 0},
                               {"name": "story", "template": "Answer as a story: {input}"}])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from lab.chat.presets import system_presets
from lab.errors import LabError
from lab.interface import Message, SamplingParams, check_number, lone_surrogate

MIN_PANES, MAX_PANES = 2, 4
SLOT = "{input}"
SAMPLING = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed")
DEFAULTS = SamplingParams()
AS_LOADED = "as loaded"  # the page's word for "the model (or quantization) the page has loaded"


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
    model: str | None = None  # a model of its own (a registry name, Hub id, path); None: the page's loaded model
    quant: str | None = None  # its quantization (auto, bf16, 4bit, ...); None: auto, or the loaded model's own

    @property
    def names_model(self) -> bool:
        """Whether it asks for a model or quantization other than whatever the page has loaded."""
        return bool(self.model or self.quant)

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
        for k in ("preset", "model", "quant"):  # left out when unset: older records and fingerprints stay as they were
            if d[k] is None:
                del d[k]
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
    model, quant = (_optional_text(d.get(k), where, what) for k, what in (("model", "model"),
                                                                          ("quant", "quantization")))
    values = {}
    try:
        for k in SAMPLING:
            v = d.get(k)
            if v is None or v == "":
                values[k] = None if k == "seed" else getattr(DEFAULTS, k)
            elif isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise ValueError(f"{k} must be a number, got {v!r}")
            elif k == "seed" and _negative(v):
                values[k] = None  # -1: a fresh seed each run
            else:
                values[k] = check_number(k, v)  # the one rule for numbers: finite, in range
        variant = Variant(name=name, system=system.strip(), template=template, preset=preset, model=model,
                          quant=quant, **values)
        variant.params()  # SamplingParams checks the ranges
    except ValueError as e:
        raise LabError(f"{where} has an invalid sampling setting: {e}.") from None
    return variant


def _optional_text(value, where: str, what: str) -> str | None:
    """A model or quantization field: None, "" and the page's "as loaded" mean the loaded model's."""
    if value is None or (isinstance(value, str) and value.strip() in ("", AS_LOADED)):
        return None
    if not isinstance(value, str) or lone_surrogate(value) or "\n" in value:
        raise LabError(f"{where} needs its {what} as one line of text.")
    return value.strip()


def _negative(v) -> bool:
    try:
        return float(v) < 0
    except ValueError:
        return False


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
    if lone_surrogate(user_input):
        raise LabError("The input holds text that is not valid Unicode (a lone surrogate); remove it.")
    return user_input
