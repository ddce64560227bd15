"""Where things live (the LAB_* folders) and the one YAML reader.

    config.data_dir()       # LAB_DATA_DIR or --data-dir: benchmark data in the official layouts (None: the Hub)
    config.runs_dir()       # LAB_RUNS_DIR or --runs-dir: the run history lab.db (default runs/)
    config.cache_dir()      # LAB_CACHE_DIR: tiny-random's checkpoint (default ~/.cache/qwen-lab)
    config.shipped("evals") # evals/ and prompts/: the checkout's, or the copies installed with the package
    config.read_yaml(path, "The benchmark spec")   # a mapping, or one sentence naming the file

`evals/` and `prompts/` stay where the user keeps them at the top of the checkout; `pip install .`
installs copies of both as package data under `lab/shipped/`, and those are used when no checkout is
around the package.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from lab.errors import LabError

PACKAGE = Path(__file__).resolve().parent
OVERRIDES = {"evals": "LAB_EVALS_DIR", "prompts": "LAB_PROMPTS_DIR"}


def shipped(name: str) -> Path:
    """`evals` or `prompts`: the folder named by its LAB_* variable, else the installed copy, else the checkout's."""
    override = os.environ.get(OVERRIDES[name])
    if override:
        return Path(override).expanduser()
    installed = PACKAGE / "shipped" / name
    return installed if installed.is_dir() else PACKAGE.parent / name


def evals_dir() -> Path:
    return shipped("evals")


def prompts_dir() -> Path:
    return shipped("prompts")


def user_prompts_dir() -> Path:
    """Where prompt files the page saves go: beside the shipped ones in a checkout (or LAB_PROMPTS_DIR), else
    ~/.config/qwen-lab/prompts (an installed package's own folder is no place for a user's files)."""
    here = prompts_dir()
    if os.environ.get("LAB_PROMPTS_DIR") or not here.is_relative_to(PACKAGE):
        return here
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "qwen-lab" / "prompts"


def data_dir(value: str | Path | None = None) -> Path | None:
    """The benchmark data folder: `value` (--data-dir), else LAB_DATA_DIR, else None (the Hub)."""
    value = value or os.environ.get("LAB_DATA_DIR")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise LabError(f"The data folder {path} does not exist; pass --data-dir with the benchmark data folder.")
    return path


def runs_dir(value: str | Path | None = None) -> Path:
    return Path(value or os.environ.get("LAB_RUNS_DIR") or "runs")


def cache_dir() -> Path:
    if os.environ.get("LAB_CACHE_DIR"):
        return Path(os.environ["LAB_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qwen-lab"


def parse_yaml(text: str, what: str):
    """YAML text to data; `what` names it in the one sentence a syntax error gives."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LabError(f"{what} is not valid YAML ({str(e).splitlines()[0]}).") from None


def read_yaml(path: Path, what: str, missing: str = "") -> dict:
    """A YAML file holding a mapping. `what` begins each error sentence ("The prompt file"); `missing` is
    what to do when the file is not there."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabError(f"{what} {path} is missing{'; ' + missing if missing else ''}.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LabError(f"{what} {path} cannot be read ({e}).") from None
    data = parse_yaml(text, f"{what} {path}")
    if not isinstance(data, dict):
        raise LabError(f"{what} {path} must hold a mapping at its top level.")
    return data
