"""Registry, model-name resolution and the quantization rules, including their error sentences."""

from __future__ import annotations

import pytest

from lab import runtime
from lab.errors import LabError
from lab.models import (
    DEFAULT_CPU,
    DEFAULT_CUDA,
    REGISTRY,
    TINY,
    check_quant_possible,
    fetch_checkpoint,
    pick_device,
    resolve_quant,
    resolve_spec,
)


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be a machine with or without CUDA, bitsandbytes and bf16."""

    def set_(cuda: bool, bnb: bool = True, bf16: bool = True, free_gib: float = 80):
        monkeypatch.setattr(runtime, "cuda_available", lambda: cuda)
        monkeypatch.setattr(runtime, "bnb_available", lambda: bnb)
        monkeypatch.setattr(runtime, "bf16_supported", lambda: cuda and bf16)
        monkeypatch.setattr(runtime, "gpu_free_bytes", lambda: int(free_gib * 2**30) if cuda else None)

    return set_


def test_registry_has_the_qwen25_instruct_family():
    for size in ("0.5B", "1.5B", "3B", "7B"):
        spec = REGISTRY[f"Qwen2.5-{size}-Instruct"]
        assert spec.hub_id == f"Qwen/Qwen2.5-{size}-Instruct"
        assert spec.context_length == 32768
    assert REGISTRY["Qwen2.5-7B-Instruct"].cuda_quant == "4bit"
    assert REGISTRY["Qwen2.5-0.5B-Instruct"].cuda_quant == "bf16"


@pytest.mark.parametrize("typed", ["Qwen2.5-7B-Instruct", "qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct"])
def test_names_and_hub_ids_resolve_to_the_registry(typed):
    assert resolve_spec(typed, "cpu") is REGISTRY["Qwen2.5-7B-Instruct"]


def test_default_model_depends_on_the_device():
    assert resolve_spec(None, "cuda").name == DEFAULT_CUDA == "Qwen2.5-7B-Instruct"
    assert resolve_spec(None, "cpu").name == DEFAULT_CPU == "Qwen2.5-0.5B-Instruct"


def test_other_hub_ids_and_local_checkpoints_resolve(tmp_path):
    spec = resolve_spec("someone/their-model", "cpu")
    assert spec.hub_id == "someone/their-model" and spec.context_length is None
    (tmp_path / "config.json").write_text("{}")
    local = resolve_spec(str(tmp_path), "cpu")
    assert local.path == str(tmp_path.resolve()) and local.hub_id is None


@pytest.mark.parametrize("name, fragment", [
    ("not a model", "is not a known model name"),
    ("./missing/dir", "There is no checkpoint directory"),
    ("a/b/c", "There is no checkpoint directory"),
])
def test_bad_names_give_one_sentence(name, fragment):
    with pytest.raises(LabError) as e:
        resolve_spec(name, "cpu")
    msg = str(e.value)
    assert fragment in msg and msg.endswith(".") and "\n" not in msg


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(LabError, match="without a config.json"):
        resolve_spec(str(tmp_path), "cpu")


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_bitsandbytes_quants_need_cuda(machine, quant):
    machine(cuda=False)
    with pytest.raises(LabError, match="needs an NVIDIA GPU with CUDA"):
        check_quant_possible(quant, pick_device("auto"))


def test_bitsandbytes_quants_need_bitsandbytes(machine):
    machine(cuda=True, bnb=False)
    with pytest.raises(LabError, match=r"needs bitsandbytes, which is not installed; install it with pip install"):
        resolve_quant("4bit", REGISTRY["Qwen2.5-7B-Instruct"], "cuda")


def test_unknown_quant_and_device(machine):
    machine(cuda=False)
    with pytest.raises(LabError, match="Unknown quantization 'int3'"):
        check_quant_possible("int3", "cpu")
    with pytest.raises(LabError, match="PyTorch sees no CUDA GPU"):
        pick_device("cuda")


@pytest.mark.parametrize("name, cuda, bnb, bf16, expected, noted", [
    ("Qwen2.5-7B-Instruct", True, True, True, "4bit", False),      # 7B in 4-bit on CUDA
    ("Qwen2.5-0.5B-Instruct", True, True, True, "bf16", False),    # small models stay 16-bit
    ("Qwen2.5-7B-Instruct", True, False, True, "bf16", True),      # no bitsandbytes: 16-bit, said on the page
    ("Qwen2.5-7B-Instruct", True, False, False, "fp16", True),     # and fp16 on a GPU without bf16
    ("Qwen2.5-0.5B-Instruct", False, False, False, "fp32", False),  # CPU: fp32 for small models
    ("Qwen2.5-7B-Instruct", False, True, False, "bf16", False),    # CPU: bf16 for 7B (half the RAM), never bnb
    (TINY, False, False, False, "fp32", False),
])
def test_auto_rules(machine, name, cuda, bnb, bf16, expected, noted):
    machine(cuda=cuda, bnb=bnb, bf16=bf16)
    quant, notes = resolve_quant("auto", REGISTRY[name], pick_device("auto"))
    assert quant == expected
    assert bool(notes) == noted


def test_auto_for_unknown_models_fits_free_memory(machine):
    spec = resolve_spec("someone/big-model", "cuda")
    machine(cuda=True, free_gib=10)
    assert resolve_quant("auto", spec, "cuda", checkpoint_bytes=6 * 2**30)[0] == "bf16"
    assert resolve_quant("auto", spec, "cuda", checkpoint_bytes=15 * 2**30)[0] == "4bit"


def test_explicit_quant_is_kept(machine):
    machine(cuda=True)
    assert resolve_quant("8bit", REGISTRY["Qwen2.5-3B-Instruct"], "cuda") == ("8bit", [])
    machine(cuda=False)
    assert resolve_quant("fp16", REGISTRY["Qwen2.5-3B-Instruct"], "cpu") == ("fp16", [])


def test_uncached_hub_model_offline_names_the_way_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LabError) as e:
        fetch_checkpoint("no/such-model")
    msg = str(e.value)
    assert "not in the local Hugging Face cache" in msg
    assert "--model tiny-random" in msg and "--model PATH" in msg
