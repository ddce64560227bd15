"""Behind the interface: the registry and quantization rules (`registry`), the one model a running app
serves (`manager`), Transformers models loaded here (`hf`), models behind an OpenAI-compatible server
(`remote`) and the offline `tiny-random` (`tiny`).

    from lab.models import load_model
    model = load_model("Qwen2.5-7B-Instruct", quant="4bit")   # CUDA + bitsandbytes
    model = load_model("tiny-random")                         # offline, any CPU
    model = load_model("/path/to/checkpoint")                 # a local Transformers checkpoint
    model = load_model("/path/to/model-q4_k_m.gguf")          # a GGUF file, dequantized on loading
    model = load_model("Qwen/Qwen2.5-7B-Instruct-GGUF", gguf_file="qwen2.5-7b-instruct-q4_k_m.gguf")
    model = load_model("openai:http://127.0.0.1:8000/v1#Qwen2.5-7B-Instruct")   # a server
"""

from __future__ import annotations

from lab.errors import LabError
from lab.models.registry import (
    DEFAULT_CPU,
    DEFAULT_CUDA,
    DEVICES,
    MIN_CONTEXT,
    QUANTS,
    REGISTRY,
    TINY,
    ModelSpec,
    check_quant_possible,
    checkpoint_bytes,
    fetch_checkpoint,
    fetch_gguf,
    pick_device,
    resolve_quant,
    resolve_spec,
)

__all__ = ["DEFAULT_CPU", "DEFAULT_CUDA", "DEVICES", "QUANTS", "REGISTRY", "TINY", "ModelSpec", "check_quant_possible",
           "fetch_checkpoint", "load_model", "pick_device", "resolve_quant", "resolve_spec"]


def load_model(name: str | None = None, quant: str = "auto", device: str = "auto", double_quant: bool = True,
               context: int | None = None, api_key: str | None = None, gguf_file: str | None = None):
    """Load a model for chat, evaluation and scoring: an `hf.HFModel`, or for `openai:BASE_URL#MODEL` a
    `remote.RemoteModel` (`api_key`, else LAB_API_KEY or OPENAI_API_KEY). `context` caps the token budget
    below the model's own context, or stretches it past that with YaRN. A GGUF is `name` ending in .gguf, or
    `gguf_file`: a file in the Hub repository or local folder `name` (a local path when `name` is None); its
    weights are dequantized into `quant`'s dtype (`auto`: fp32 on a CPU, bf16 on CUDA; 4bit/8bit re-quantize them
    with bitsandbytes)."""
    if context is not None and context < MIN_CONTEXT:
        raise LabError(f"--context must be at least {MIN_CONTEXT} tokens, got {context}.")
    if name and name.strip().startswith("openai:") and gguf_file is None:
        if quant not in ("auto", "remote"):
            raise LabError(f"--quant {quant} applies to models loaded here; the server behind {name.strip()} "
                           "chooses its own, so leave --quant out.")
        from lab.models.remote import connect

        return connect(name, api_key=api_key, context=context)
    device = pick_device(device)
    spec = resolve_spec(name, device, gguf_file)
    check_quant_possible(quant, device)  # before downloading gigabytes
    if spec.gguf_file and spec.hub_id:
        path = fetch_gguf(spec.hub_id, spec.gguf_file)
        source = f"{spec.hub_id}/{spec.gguf_file}"
    elif spec.gguf_file:
        path, source = spec.gguf_file, spec.gguf_file
    elif spec.name == TINY:
        from lab.models.tiny import ensure_tiny_checkpoint

        path, source = str(ensure_tiny_checkpoint()), TINY
    elif spec.path:
        path, source = spec.path, spec.path
    else:
        path, source = fetch_checkpoint(spec.hub_id), spec.hub_id
    resolved, notes = resolve_quant(quant, spec, device, checkpoint_bytes(path))
    if spec.name == TINY:
        notes.insert(0, "tiny-random has random weights: its replies are noise; it exists to run the app offline")
    from lab.models.hf import load_hf

    return load_hf(path, spec=spec, source=source, quant=resolved, device=device,
                   double_quant=double_quant, context=context, notes=notes)
