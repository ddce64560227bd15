"""JSON mode as a request and as a check: the page's toggle and schema box as an OpenAI-style
`response_format`, the schema checked before anything is generated, and a reply parsed and validated.

    fmt = response_format(json_mode=True, schema_text='{"type": "object", ...}')   # None when off
    params = SamplingParams(..., response_format=fmt)      # the model layer enforces it while decoding
    check = validate(reply_text, fmt)                      # parsed object, and whether it matches the schema

Decoding itself is constrained in the model layer (`lab.models.hf.grammar`, with xgrammar).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from lab.errors import LabError
from lab.interface import schema_of


def response_format(json_mode: bool, schema_text: str | None = None) -> dict | None:
    """The page's JSON toggle and schema box as an OpenAI-style `response_format` (None: off).

    A schema without the toggle turns JSON mode on; an invalid schema is one sentence, before any decoding."""
    text = (schema_text or "").strip()
    if not text:
        return {"type": "json_object"} if json_mode else None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise LabError(f"The JSON Schema is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from None
    check_schema(schema)
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}


def check_schema(schema) -> None:
    from jsonschema import Draft202012Validator, SchemaError

    if not isinstance(schema, dict):
        raise LabError("The JSON Schema must be a JSON object, such as {\"type\": \"object\", \"properties\": {...}}.")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path) or "the top level"
        raise LabError(f"The JSON Schema is invalid at {where}: {e.message}.") from None


@dataclass
class Validation:
    parsed: object = None
    parses: bool = False
    valid: bool | None = None  # None: there was no schema to check against
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.parses:
            return f"✗ not valid JSON: {self.errors[0]}"
        if self.valid is None:
            return "✓ valid JSON"
        if self.valid:
            return "✓ valid JSON, matches the schema"
        return f"✗ valid JSON, but it does not match the schema: {'; '.join(self.errors[:3])}"


def validate(text: str, fmt: dict | None) -> Validation:
    """Parse a reply and check it against the schema (if any); never raises."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as e:
        return Validation(errors=[f"{e.msg} at line {e.lineno}, column {e.colno}"])
    schema = schema_of(fmt)
    if schema is None:
        return Validation(parsed, True, None)
    from jsonschema import Draft202012Validator

    errors = [f"{'/'.join(map(str, e.path)) or '(top level)'}: {e.message}"
              for e in Draft202012Validator(schema).iter_errors(parsed)]
    return Validation(parsed, True, not errors, errors)
