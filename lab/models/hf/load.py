"""Loading a Transformers checkpoint: bitsandbytes 4-bit (NF4) and 8-bit (LLM.int8), bf16, fp16 or fp32,
on CUDA or the CPU; YaRN past the model's own context. `lab.models.load_model` resolves the name and the
quantization and calls `load_hf` once the checkpoint is local.

A GGUF file loads through Transformers' GGUF support: config, tokenizer and weights all come from the file, every
weight dequantized into the compute dtype. Transformers will not put bitsandbytes on top of a GGUF load, so 4bit and
8bit load the dequantized weights on the CPU first and quantize them on their way to the GPU."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from lab import runtime
from lab.errors import LabError
from lab.interface import ModelInfo
from lab.models.hf.gguf_file import GgufFacts, inspect_gguf
from lab.models.hf.model import HFModel

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "4bit": torch.bfloat16, "8bit": torch.float16}  # LLM.int8 computes in fp16; bf16 inputs get cast per call


def bnb_config(quant: str, double_quant: bool = True) -> BitsAndBytesConfig:
    if quant == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=double_quant,  # quantizes the scales too: ~0.4 bits/param less
        )
    return BitsAndBytesConfig(load_in_8bit=True)  # LLM.int8 with the default outlier threshold 6.0


def quant_detail(quant: str, double_quant: bool) -> str:
    return {
        "4bit": "bitsandbytes NF4, bf16 compute" + (", double quant" if double_quant else ""),
        "8bit": "bitsandbytes LLM.int8, fp16 compute",
    }.get(quant, "")


def extend_context(config, name: str, native: int, context: int) -> str:
    """Stretch RoPE with YaRN so the model reaches `context` tokens (Qwen2.5's own recipe for 128K);
    returns the note for the page."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise LabError(f"{name} already scales its positions ({rope['rope_type']}), so --context cannot go past "
                       f"its {native:,} tokens.")
    factor = context / native
    config.rope_parameters = {**rope, "rope_type": "yarn", "factor": factor, "original_max_position_embeddings": native}
    return (f"context extended from {native:,} to {context:,} tokens with YaRN (factor {factor:g}); static YaRN "
            "can cost some quality on short texts")


def load_hf(path: str, *, spec, source: str, quant: str, device: str, double_quant: bool = True,
            context: int | None = None, notes: Sequence[str] = ()) -> "HFModel":
    """`path`: a checkpoint folder, or for a GGUF spec (`spec.gguf_file`) the local .gguf file."""
    notes = list(notes)
    gguf = inspect_gguf(path) if spec.gguf_file else None
    kwargs: dict = {"dtype": DTYPES[quant]}
    if quant in ("4bit", "8bit"):
        kwargs["quantization_config"] = bnb_config(quant, double_quant)
    if device == "cuda":
        kwargs["device_map"] = {"": 0}
    before = torch.cuda.memory_allocated() if device == "cuda" else 0
    try:
        if gguf:
            config = _gguf_config(gguf, spec.name)
            tokenizer = _gguf_tokenizer(gguf, config)
        else:
            config, tokenizer = AutoConfig.from_pretrained(path), AutoTokenizer.from_pretrained(path)
        native = spec.context_length or getattr(config, "max_position_embeddings", None) or 4096
        if context is not None and context > native:
            notes.append(extend_context(config, spec.name, native, context))
        if gguf:
            model = _load_gguf_model(gguf, config, kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
    except torch.OutOfMemoryError:
        runtime.release_gpu_memory()
        raise LabError(
            f"{spec.name} in {quant} does not fit in GPU memory; choose --quant 4bit or a smaller model."
        ) from None
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LabError(f"Could not load {spec.name} from {path} ({first.rstrip('.')}).") from None
    model.eval()
    weight_bytes = (torch.cuda.memory_allocated() - before) if device == "cuda" else model.get_memory_footprint()
    detail = quant_detail(quant, double_quant)
    if gguf:
        detail = f"GGUF {gguf.file_type}, " + (f"re-quantized: {detail}" if detail else f"dequantized to {quant}")
        notes.append(f"{gguf.detail()} in the file, architecture {gguf.architecture}")
    info = ModelInfo(
        name=spec.name, source=source, quant=quant, device="cuda:0" if device == "cuda" else "cpu",
        context_length=int(context or native), weight_bytes=int(weight_bytes),
        quant_detail=detail, notes=notes,
    )
    hf = HFModel(model, tokenizer, info)
    if hf.fast is not None:
        print("Preparing the fast decode path (compiling the decode step; a minute the first time)…",
              file=sys.stderr, flush=True)
        hf.warm_up()
    return hf


def _gguf_args(gguf: GgufFacts) -> tuple[str, str]:
    """Transformers takes a GGUF as a folder plus the file's name in it."""
    file = Path(gguf.path)
    return str(file.parent), file.name


def _gguf_config(gguf: GgufFacts, name: str):
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder, file = _gguf_args(gguf)
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=file)
    except (ValueError, NotImplementedError, KeyError):
        config = None
    if config is None or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise LabError(f"{name} is a GGUF of architecture '{gguf.architecture}', which Transformers "
                       f"{transformers.__version__} cannot load from a GGUF file; choose a GGUF of a supported "
                       "architecture (qwen2, llama, mistral, ...) or the model's own checkpoint.")
    return config


def _gguf_tokenizer(gguf: GgufFacts, config):
    folder, file = _gguf_args(gguf)
    # With the config at hand AutoTokenizer does not parse the file's metadata once more to find its class.
    return AutoTokenizer.from_pretrained(folder, gguf_file=file, config=config)


def _load_gguf_model(gguf: GgufFacts, config, kwargs: dict):
    """The model with the file's weights dequantized (`kwargs` as for a checkpoint)."""
    import transformers

    folder, file = _gguf_args(gguf)
    options = dict(kwargs)
    bnb = options.pop("quantization_config", None)
    gguf_config = getattr(transformers, "GgufConfig", None)  # Transformers 5.24+: say "dequantize" outright
    if gguf_config is not None:
        options["quantization_config"] = gguf_config(dequantize=True)
    try:
        if bnb is None:
            return AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, config=config, **options)
        # bitsandbytes quantizes weights as they load; it cannot hook a GGUF load, so hand it the dequantized ones.
        options.pop("device_map", None)
        dense = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, config=config,
                                                     **{**options, "dtype": torch.bfloat16})
    except NotImplementedError as e:  # what gguf's dequantizers raise; inspect_gguf should have caught it
        raise ValueError(str(e)) from None
    cls, state = type(dense), dense.state_dict()
    del dense
    return cls.from_pretrained(None, config=config, state_dict=state, **kwargs)  # the Auto class wants a name
