"""Prompt text kept as data in `prompts/`: the system-prompt presets (`system.yaml`) and the example tool
sets (`tools.yaml`), in Chinese and English.

    system_presets()["Qwen default"]
    tool_sets()["Weather"]           # tools in OpenAI's function format
"""

from __future__ import annotations

from lab import config
from lab.chat.tools import normalize_tools
from lab.errors import LabError


def load_prompt_file(name: str) -> dict:
    return config.read_yaml(config.prompts_dir() / name, "The prompt file",
                            missing="run from a checkout of Qwen Lab or set LAB_PROMPTS_DIR")


def system_presets() -> dict[str, str]:
    """Preset name -> system prompt text, in file order."""
    path = config.prompts_dir() / "system.yaml"
    presets = load_prompt_file("system.yaml").get("presets")
    if not isinstance(presets, list) or not presets:
        raise LabError(f"{path} has no list under 'presets'.")
    out: dict[str, str] = {}
    for i, p in enumerate(presets):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not isinstance(p.get("text"), str):
            raise LabError(f"Preset {i + 1} in {path} needs a 'name' and a 'text'.")
        if p["name"] in out:
            raise LabError(f"The preset name '{p['name']}' appears twice in {path}.")
        out[p["name"]] = p["text"].strip()
    return out


def tool_sets() -> dict[str, list[dict]]:
    """Example tool sets from prompts/tools.yaml: set name -> tools in OpenAI's format, in file order."""
    path = config.prompts_dir() / "tools.yaml"
    sets = load_prompt_file("tools.yaml").get("tool_sets")
    if not isinstance(sets, list) or not sets:
        raise LabError(f"{path} has no list under 'tool_sets'.")
    out: dict[str, list[dict]] = {}
    for i, s in enumerate(sets, start=1):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not isinstance(s.get("tools"), list):
            raise LabError(f"Tool set {i} in {path} needs a 'name' and a list of 'tools'.")
        if s["name"] in out:
            raise LabError(f"The tool set name '{s['name']}' appears twice in {path}.")
        try:
            out[s["name"]] = normalize_tools(s["tools"])
        except LabError as e:
            reason = str(e)
            raise LabError(f"Tool set '{s['name']}' in {path} is malformed: {reason[0].lower()}{reason[1:]}") from None
    return out
