"""tiny-random: built once into the cache, loaded through from_pretrained like any checkpoint,
with the real Qwen2.5 tokenizer when LAB_DATA_DIR has it and the project's own otherwise."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from lab.models import tiny


@pytest.fixture
def no_data(monkeypatch, tmp_path):
    monkeypatch.delenv("LAB_DATA_DIR", raising=False)
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_built_tokenizer_round_trips_and_speaks_chatml(no_data):
    path = tiny.ensure_tiny_checkpoint()
    assert path.name.endswith("-built") and path.parent == no_data
    tok = AutoTokenizer.from_pretrained(path)
    text = "Hello, 世界! def f(x):\n    return x 🙂"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: nothing unknown
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    assert len(tok("<|im_end|>", add_special_tokens=False)["input_ids"]) == 1 and ids[2] == tok.eos_token_id


def test_checkpoint_is_built_once_and_reused(no_data):
    first = tiny.ensure_tiny_checkpoint()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny.ensure_tiny_checkpoint() == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in no_data.iterdir() if p.name.startswith(".building-")]  # no half-built leftovers


def test_loads_through_from_pretrained(no_data):
    from lab.models import load_model

    model = load_model("tiny-random")
    assert type(model.model).__name__ == "Qwen2ForCausalLM"
    assert model.model.name_or_path == str(tiny.ensure_tiny_checkpoint())
    assert model.info.quant == "fp32" and model.info.device == "cpu"
    assert any("random weights" in n for n in model.info.notes)


def test_real_qwen_tokenizer_when_data_is_there(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    path = tiny.ensure_tiny_checkpoint()
    assert path.name.endswith("-qwen2.5")
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) == 151665
    assert tok("Hello, world!", add_special_tokens=False)["input_ids"] == [9707, 11, 1879, 0]


def test_a_local_checkpoint_directory_loads_by_path(no_data):
    from lab.models import load_model

    path = tiny.ensure_tiny_checkpoint()
    model = load_model(str(path))
    assert model.info.source == str(path) and model.info.name == path.name
    assert model.info.context_length == 4096  # read from the checkpoint's config
    assert not model.info.notes  # only the registry's tiny-random is labelled as noise by name
