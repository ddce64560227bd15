"""System-prompt presets are data in prompts/system.yaml."""

from __future__ import annotations

import pytest
import yaml

from lab.chat.presets import system_presets
from lab.config import prompts_dir
from lab.errors import LabError


def test_at_least_six_presets_in_chinese_and_english_with_qwens_default():
    presets = system_presets()
    assert len(presets) >= 6
    assert presets["Qwen default"] == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    langs = {p["lang"] for p in yaml.safe_load((prompts_dir() / "system.yaml").read_text())["presets"]}
    assert langs == {"en", "zh"}
    assert any("\u4e00" <= ch <= "\u9fff" for text in presets.values() for ch in text)


@pytest.mark.parametrize("content, fragment", [
    ("presets: [", "is not valid YAML"),
    ("- just a list", "must hold a mapping"),
    ("presets: []", "has no list under 'presets'"),
    ("presets: [{name: a}]", "needs a 'name' and a 'text'"),
    ("presets: [{name: a, text: x}, {name: a, text: y}]", "appears twice"),
])
def test_broken_preset_files_are_named_in_one_sentence(tmp_path, monkeypatch, content, fragment):
    (tmp_path / "system.yaml").write_text(content)
    monkeypatch.setenv("LAB_PROMPTS_DIR", str(tmp_path))
    with pytest.raises(LabError) as e:
        system_presets()
    assert fragment in str(e.value) and str(tmp_path) in str(e.value)
