"""Variant sets as YAML files in prompts/compare/ (`NAME.yaml`: a description and a list of variants): the
shipped examples, and the sets a user saves from the page."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import yaml

from lab import config
from lab.compare.variants import Variant, parse_variants
from lab.errors import LabError

_SET_NAME = re.compile(r"^[\w][\w .-]{0,63}$")


def sets_dirs() -> list[Path]:
    """Where sets are read from: the user's folder first (where the page saves), then the shipped examples."""
    dirs = [config.user_prompts_dir() / "compare", config.prompts_dir() / "compare"]
    return list(dict.fromkeys(dirs))


def sets_dir() -> Path:
    """Where the page saves a set."""
    return sets_dirs()[0]


def list_sets() -> list[str]:
    return sorted({p.stem for d in sets_dirs() if d.is_dir() for p in d.glob("*.yaml")})


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not _SET_NAME.match(name) or name.endswith("."):
        raise LabError("Name the variant set with letters, digits, spaces, '-', '_' or '.' (at most 64), "
                       f"not '{name}'.")
    return name


def save_set(name: str, variants: Sequence[Variant], description: str = "") -> Path:
    """Write the variants to compare/<name>.yaml in the user's prompts folder (replacing a set of that name)."""
    path = sets_dir() / f"{_check_name(name)}.yaml"
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
    """(description, variants) of compare/<name>.yaml, the user's set before a shipped one."""
    name = _check_name(name)
    path = next((d / f"{name}.yaml" for d in sets_dirs() if (d / f"{name}.yaml").is_file()), None)
    if path is None:
        raise LabError(f"There is no variant set '{name}' in {' or '.join(map(str, sets_dirs()))}.")
    data = config.read_yaml(path, "The variant set")
    if not isinstance(data.get("variants"), list):
        raise LabError(f"The variant set {path} needs a list under 'variants'.")
    return str(data.get("description") or ""), parse_variants(data["variants"])
