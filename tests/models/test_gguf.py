"""GGUF files load through lab.models.load_model: the weights as the file quantizes them, dequantized into fp32.

Every type the gguf package can write is written from a random Qwen2 checkpoint (tests/models/gguf_files.py) and
loaded on the CPU. Two checks per type: the logits equal those of the source model with its weights quantized and
dequantized by gguf's own functions (what a faithful loader must compute, to fp32 rounding), and they stay within
the bound the type's rounding implies from the source's own logits. TQ1_0 and TQ2_0 quantize rows in blocks of
256, wider than tiny-random's 32, so they are written from a wider random model.

tiny-random here always has the project's small tokenizer (its recipe without LAB_DATA_DIR): with Qwen2.5's 151K
tokens, Transformers' GGUF reader spends minutes per file on the vocabulary, and the weights are what is tested.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lab.cli import add_model_flags, load_request
from lab.errors import LabError
from lab.models import load_model, resolve_spec
from lab.models.manager import ModelManager
from lab.models.tiny import (
    build_tokenizer,
    ensure_tiny_checkpoint,
    qwen_tokenizer_dir,
    tiny_config,
    write_random_checkpoint,
)
from tests.models.gguf_files import WRITABLE, block_size, roundtrip, write_gguf

PROMPTS = ["Hello there, how are you?", "def main():\n    return 42\n", "敏捷的棕色狐狸跳过了懒狗。 12345"]
LOSSLESS = {"F32"}
# Logits move by about (relative weight error) x (logit scale) through two layers: measured 1.0-2.6x; 4x is the bound.
SLACK = 4.0


class Source:
    def __init__(self, path):
        self.path = path
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.ids = [self.tokenizer(p, return_tensors="pt").input_ids for p in PROMPTS]
        self.base = self.logits(self.model)
        self.scale = max(t.abs().max().item() for t in self.base)

    def logits(self, model) -> list[torch.Tensor]:
        with torch.no_grad():
            return [model(ids).logits for ids in self.ids]

    def roundtripped(self, type_name: str):
        """The source model with its weights as the file of `type_name` stores them."""
        model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32).eval()
        model.load_state_dict(roundtrip(self.model.state_dict(), type_name))
        return model

    def weight_error(self, type_name: str) -> float:
        """The largest relative (Frobenius) error quantization puts into one weight matrix."""
        state = self.model.state_dict()
        back = roundtrip(state, type_name)
        return max(((back[k] - v).norm() / v.norm()).item() for k, v in state.items() if v.ndim > 1)


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    if qwen_tokenizer_dir() is None:
        return Source(ensure_tiny_checkpoint())
    tokenizer = build_tokenizer()  # tiny-random as it is built without LAB_DATA_DIR
    return Source(write_random_checkpoint(tiny_config(tokenizer), tokenizer, tmp_path_factory.mktemp("tiny") / "c"))


@pytest.fixture(scope="module")
def wide_source(tmp_path_factory):
    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer)
    config.hidden_size, config.intermediate_size = 256, 512
    return Source(write_random_checkpoint(config, tokenizer, tmp_path_factory.mktemp("wide") / "ckpt", seed=1))


@pytest.fixture(scope="module")
def q8_file(tiny_source, tmp_path_factory):
    return write_gguf(tiny_source.model, tiny_source.tokenizer, tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf",
                      "Q8_0")


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("type_name", list(WRITABLE))
def test_every_writable_type_loads_with_the_logits_its_rounding_allows(type_name, request, tmp_path):
    source = request.getfixturevalue("tiny_source" if block_size(type_name) <= 32 else "wide_source")
    path = write_gguf(source.model, source.tokenizer, tmp_path / f"m-{type_name.lower()}.gguf", type_name)
    loaded = load_model(str(path), device="cpu")
    named = WRITABLE[type_name].name.removeprefix("MOSTLY_").removeprefix("ALL_")  # llama.cpp's: MXFP4_MOE
    assert loaded.info.quant == "fp32" and loaded.info.quant_detail == f"GGUF {named}, dequantized to fp32"
    assert f"GGUF {named}" in loaded.info.summary()

    got = source.logits(loaded.model)
    # 1. The loader computes what the file holds: the source's weights through gguf's own quantize -> dequantize.
    assert _max_diff(got, source.logits(source.roundtripped(type_name))) <= 1e-5
    # 2. Against the source itself, within what the type's rounding moves the logits.
    diff, error = _max_diff(got, source.base), source.weight_error(type_name)
    if type_name in LOSSLESS:
        assert diff <= 1e-5
    else:
        assert 0 < error and 0 < diff <= SLACK * error * source.scale, (diff, error, source.scale)
    loaded.close()


def test_the_tokenizer_comes_from_the_file(tiny_source, q8_file):
    loaded = load_model(str(q8_file), device="cpu")
    for prompt in PROMPTS + ["<|im_start|>user\nhi<|im_end|>\n"]:
        assert loaded.tok(prompt).input_ids == tiny_source.tokenizer(prompt).input_ids, prompt
    assert loaded.tok.chat_template == tiny_source.tokenizer.chat_template
    assert loaded.tok.eos_token == tiny_source.tokenizer.eos_token
    chat = [{"role": "user", "content": "hi"}]
    assert loaded.render(chat) == tiny_source.tokenizer.apply_chat_template(chat, tokenize=False,
                                                                             add_generation_prompt=True)
    assert tiny_source.tokenizer.convert_tokens_to_ids("<|im_end|>") in loaded.eos_ids


def test_a_file_without_a_file_type_is_named_by_its_tensors(tiny_source, tmp_path):
    from gguf import LlamaFileType

    path = write_gguf(tiny_source.model, tiny_source.tokenizer, tmp_path / "x.gguf", "Q4_0",
                      file_type=LlamaFileType.GUESSED)
    info = load_model(str(path), device="cpu").info
    assert info.quant_detail.startswith("GGUF Q4_0,") and any("Q4_0" in n and "F32" in n for n in info.notes)


def test_bf16_dequantizes_into_bf16(q8_file):
    loaded = load_model(str(q8_file), quant="bf16", device="cpu")
    assert loaded.model.dtype == torch.bfloat16 and loaded.info.quant_detail == "GGUF Q8_0, dequantized to bf16"


# ---- naming a GGUF ---------------------------------------------------------------------------------------------
def test_a_folder_plus_gguf_file_and_the_flags(q8_file):
    by_folder = load_model(str(q8_file.parent), gguf_file=q8_file.name, device="cpu")
    assert by_folder.info.source == str(q8_file.resolve())
    parser = argparse.ArgumentParser()
    add_model_flags(parser, env=False)
    args = parser.parse_args(["--model", str(q8_file.parent), "--gguf-file", q8_file.name, "--device", "cpu"])
    request = load_request(args)
    assert request.gguf_file == q8_file.name
    assert ModelManager().load(request).info.quant_detail.startswith("GGUF Q8_0")


def test_hub_names_resolve_to_a_file_in_the_repository():
    spec = resolve_spec("Qwen/Qwen2.5-7B-Instruct-GGUF", "cuda", "qwen2.5-7b-instruct-q4_k_m.gguf")
    assert (spec.hub_id, spec.gguf_file, spec.cuda_quant) == (
        "Qwen/Qwen2.5-7B-Instruct-GGUF", "qwen2.5-7b-instruct-q4_k_m.gguf", "bf16")
    one = resolve_spec("Qwen/Qwen2.5-7B-Instruct-GGUF/qwen2.5-7b-instruct-q4_k_m.gguf", "cpu")
    assert (one.hub_id, one.gguf_file) == (spec.hub_id, spec.gguf_file)


# ---- errors: one sentence each -----------------------------------------------------------------------------------
def _one_sentence(call, *fragments):
    with pytest.raises(LabError) as e:
        call()
    msg = str(e.value)
    assert msg.endswith(".") and "\n" not in msg and "Traceback" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_a_missing_file(tmp_path):
    _one_sentence(lambda: load_model(str(tmp_path / "nope.gguf"), device="cpu"), "There is no GGUF file at")
    _one_sentence(lambda: load_model(str(tmp_path), gguf_file="nope.gguf", device="cpu"), "There is no GGUF file")


def test_a_file_that_is_not_gguf(tmp_path):
    fake = tmp_path / "weights.gguf"
    fake.write_bytes(b"PK\x03\x04 a zip, not a gguf")
    _one_sentence(lambda: load_model(str(fake), device="cpu"), "is not a GGUF file")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF\x03\x00\x00\x00\xff\xff")
    _one_sentence(lambda: load_model(str(cut), device="cpu"), "damaged GGUF file")


def test_an_architecture_transformers_cannot_load(tiny_source, tmp_path):
    path = write_gguf(tiny_source.model, tiny_source.tokenizer, tmp_path / "rwkv.gguf", "F16", architecture="rwkv7")
    _one_sentence(lambda: load_model(str(path), device="cpu"), "architecture 'rwkv7'", "cannot load")


def test_a_tensor_type_transformers_cannot_dequantize(tiny_source, tmp_path):
    path = write_gguf(tiny_source.model, tiny_source.tokenizer, tmp_path / "q8_1.gguf", "Q8_0",
                      unreadable="Q8_1")
    _one_sentence(lambda: load_model(str(path), device="cpu"), "Q8_1", "cannot dequantize")


def test_other_mistakes(q8_file, monkeypatch):
    _one_sentence(lambda: load_model("tiny-random", gguf_file="x.gguf", device="cpu"), "no GGUF file")
    _one_sentence(lambda: load_model("owner/name", gguf_file="weights.bin", device="cpu"), "is not one")
    _one_sentence(lambda: load_model(str(q8_file), quant="4bit", device="cpu"), "bitsandbytes")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _one_sentence(lambda: load_model("someone/none-GGUF", gguf_file="m-q4_k_m.gguf", device="cpu"),
                  "someone/none-GGUF/m-q4_k_m.gguf is not in the local Hugging Face cache")


@pytest.mark.gpu
@pytest.mark.parametrize("quant", ["bf16", "4bit", "8bit"])
def test_on_cuda_a_gguf_loads_in_bf16_or_requantized(q8_file, tiny_source, quant):
    loaded = load_model(str(q8_file), quant=quant, device="cuda")
    assert loaded.info.device == "cuda:0" and loaded.info.quant == quant
    if quant != "bf16":
        assert loaded.info.quant_detail.startswith("GGUF Q8_0, re-quantized: bitsandbytes")
    with torch.no_grad():
        got = [loaded.model(ids.cuda()).logits.float().cpu() for ids in tiny_source.ids]
    # bf16 compute, then NF4 / LLM.int8 on top of Q8_0: loose, but a wrong weight map is far outside it.
    bound = {"bf16": 0.05, "8bit": 0.2, "4bit": 0.5}[quant] * max(tiny_source.scale, 1.0)
    assert _max_diff(got, tiny_source.base) <= bound
    loaded.close()
