"""Checking variants, the word diff and variant sets in YAML, on literal values (no model)."""

from __future__ import annotations

import json
import shutil

import pytest

from lab.chat.presets import system_presets
from lab.compare import Variant, check_input, parse_variants
from lab.compare.diff import word_diff, word_diff_html
from lab.compare.sets import list_sets, load_set, save_set
from lab.config import prompts_dir
from lab.errors import LabError
from lab.interface import SamplingParams

TWO = [{"name": "plain"}, {"name": "story", "system": "Concise", "template": "Answer as a story: {input}",
                           "temperature": 0, "max_new_tokens": 16}]


# ---- variants -----------------------------------------------------------------------------------
def test_variants_take_presets_templates_and_defaults():
    a, b = parse_variants(TWO)
    assert a.system == "" and a.template == "{input}" and a.params() == SamplingParams()
    assert b.system == system_presets()["Concise"] and b.preset == "Concise"
    assert b.messages("Why {braces}?") == [{"role": "system", "content": b.system},
                                           {"role": "user", "content": "Answer as a story: Why {braces}?"}]
    assert b.params().greedy and b.params().max_new_tokens == 16
    unnamed = parse_variants(json.dumps([{}, {"seed": -1}, {"seed": 7}]))
    assert [v.name for v in unnamed] == ["A", "B", "C"] and [v.seed for v in unnamed] == [None, None, 7]
    assert a.fingerprint != b.fingerprint and a.key.startswith("plain #")
    edited = Variant(**{**b.to_dict(), "name": "renamed"})
    assert edited.fingerprint == b.fingerprint  # the name is not part of what is compared


@pytest.mark.parametrize("items, message", [
    ([{"name": "only"}], "Compare takes 2 to 4 variants, not 1"),
    ([{}] * 5, "Compare takes 2 to 4 variants, not 5"),
    ([{}, {"template": "no slot"}], r"Variant 'B' has a template without an \{input\} slot"),
    ([{}, {"temperature": -1}], "Variant 'B' has an invalid sampling setting: temperature must be 0 or a number between 0.01 and 2"),
    ([{}, {"top_p": 0}], r"invalid sampling setting: top_p must be a number between 0.001 and 1, got 0\.$"),
    ([{}, {"max_new_tokens": 0}], "max_new_tokens must be a whole number between 1 and 1,048,576"),
    ([{}, {"top_k": 2.5}], "top_k must be a whole number"),
    ([{}, {"top_k": float("inf")}], "top_k must be a whole number between 0 and 1,000,000, got inf"),
    ([{}, {"seed": 10**30}], "seed must be a whole number between 0 and 4,294,967,295"),
    ([{}, {"temperature": float("nan")}], "temperature must be 0 or a number between 0.01 and 2, got nan"),
    ([{}, {"temperature": "hot"}], "invalid sampling setting"),
    ([{"name": "x"}, {"name": "x"}], "Two variants are named 'x'"),
    ([{}, {"colour": "red"}], "Variant 2 has unknown setting"),
    ([{}, {"preset": "Nope"}], "names the preset 'Nope'"),
    ("[{", "The variants are not valid JSON"),
    ({"name": "a"}, "The variants must be a list"),
])
def test_bad_variants_are_one_sentence(items, message):
    with pytest.raises(LabError, match=message):
        parse_variants(items)


def test_empty_input_is_refused():
    with pytest.raises(LabError, match="The input is empty"):
        check_input("  \n")


# ---- diff ---------------------------------------------------------------------------------------
def test_word_diff_marks_insertions_and_deletions():
    assert word_diff("the quick brown fox", "the slow brown fox jumps") == [
        ("=", "the "), ("-", "quick"), ("+", "slow"), ("=", " brown fox"), ("+", " jumps")]
    assert ("+", "好") in word_diff("你好吗", "你好好吗")  # Chinese is compared character by character
    html = word_diff_html("a <b> c", "a <i> c d", "left", "right")
    assert "<del" in html and "<ins" in html and "&lt;" in html and "<b>" not in html and "<i>" not in html
    assert "1 word removed, 2 words added" in html


# ---- variant sets ---------------------------------------------------------------------------------
def test_shipped_sets_load():
    names = list_sets()
    assert {"concise-vs-default", "step-by-step"} <= set(names)
    for name in names:
        description, variants = load_set(name)
        assert description and 2 <= len(variants) <= 4


def test_save_and_load_a_set(tmp_path, monkeypatch):
    shutil.copy(prompts_dir() / "system.yaml", tmp_path / "system.yaml")
    monkeypatch.setenv("LAB_PROMPTS_DIR", str(tmp_path))
    variants = parse_variants(TWO + [{"name": "中文", "system": "Free text: {not a slot}", "seed": 3,
                                      "template": "{input}\n\n请用中文回答。"}])
    path = save_set("my set", variants, "three ways")
    assert path == tmp_path / "compare" / "my set.yaml" and "Concise" in path.read_text(encoding="utf-8")
    assert list_sets() == ["my set"]
    description, loaded = load_set("my set")
    assert description == "three ways" and loaded == variants
    with pytest.raises(LabError, match="Name the variant set"):
        save_set("../escape", variants)
    with pytest.raises(LabError, match="There is no variant set 'gone'"):
        load_set("gone")
    (tmp_path / "compare" / "broken.yaml").write_text("variants: {a: 1}", encoding="utf-8")
    with pytest.raises(LabError, match="needs a list under 'variants'"):
        load_set("broken")
