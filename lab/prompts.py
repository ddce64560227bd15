"""Prompt text kept as data in the repository's `prompts/` folder (LAB_PROMPTS_DIR overrides it).

    from lab.prompts import system_presets
    system_presets()["Qwen default"]
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from lab.errors import LabError


def prompts_dir() -> Path:
    if os.environ.get("LAB_PROMPTS_DIR"):
        return Path(os.environ["LAB_PROMPTS_DIR"])
    return Path(__file__).resolve().parent.parent / "prompts"


def load_yaml(name: str) -> dict:
    path = prompts_dir() / name
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(
            f"The prompt file {path} is missing; run from a checkout of Qwen Lab or set LAB_PROMPTS_DIR."
        ) from None
    except yaml.YAMLError as e:
        raise LabError(f"The prompt file {path} is not valid YAML ({str(e).splitlines()[0]}).") from None
    if not isinstance(data, dict):
        raise LabError(f"The prompt file {path} must hold a mapping at its top level.")
    return data


def system_presets() -> dict[str, str]:
    """Preset name -> system prompt text, in file order."""
    presets = load_yaml("system.yaml").get("presets")
    if not isinstance(presets, list) or not presets:
        raise LabError(f"{prompts_dir() / 'system.yaml'} has no list under 'presets'.")
    out: dict[str, str] = {}
    for i, p in enumerate(presets):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not isinstance(p.get("text"), str):
            raise LabError(f"Preset {i + 1} in {prompts_dir() / 'system.yaml'} needs a 'name' and a 'text'.")
        if p["name"] in out:
            raise LabError(f"The preset name '{p['name']}' appears twice in {prompts_dir() / 'system.yaml'}.")
        out[p["name"]] = p["text"].strip()
    return out
