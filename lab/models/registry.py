"""The model registry, how a name resolves, the quantization rules, and fetching a checkpoint.

A model is named by a registry name (case-insensitive), a Hugging Face Hub id (`owner/name`), a local
checkpoint directory, or `openai:BASE_URL#MODEL` for one behind an OpenAI-compatible server. Weights
come from the local Hugging Face cache first and are downloaded only when missing.

A GGUF file (llama.cpp's format) is named by its local path (`path/to/model-q4_k_m.gguf`), by a Hub id plus the
file's name in that repository (`gguf_file=`, the `--gguf-file` flag), or by both in one string
(`owner/name/file.gguf`, what the page's model box takes). Transformers dequantizes its weights on loading.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lab import runtime
from lab.errors import LabError
from lab.interface import LIMITS

QUANTS = ("auto", "4bit", "8bit", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cuda", "cpu")
TINY = "tiny-random"
MIN_CONTEXT = LIMITS["context"].low  # the one rule for numbers (lab.interface)

# Only what from_pretrained needs; no *.bin/*.pth duplicates, no remote code.
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_GGUF = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)/(.+\.gguf)$", re.I)  # owner/name/path/in/repo.gguf


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hub_id: str | None = None  # None for tiny-random and local directories
    path: str | None = None  # a local checkpoint directory
    context_length: int | None = None  # None: read max_position_embeddings from the config
    cuda_quant: str | None = None  # what `auto` picks on CUDA; None: decide by size
    cpu_quant: str = "fp32"  # what `auto` picks on the CPU
    params_b: float | None = None  # parameters, in billions (for the page and memory estimates)
    gguf_file: str | None = None  # a GGUF: its absolute path when local (then `path` is its folder), else its
    #                               name inside the Hub repository `hub_id`


def _qwen(size: str, params_b: float, cuda_quant: str, cpu_quant: str, prefix="Qwen2.5") -> ModelSpec:
    name = f"{prefix}-{size}-Instruct"
    # Qwen2.5 Instruct: 32K tokens native context (the 7B and larger reach 128K with YaRN).
    return ModelSpec(name, f"Qwen/{name}", None, 32768, cuda_quant, cpu_quant, params_b)


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _qwen("0.5B", 0.49, "bf16", "fp32"),
        _qwen("1.5B", 1.54, "bf16", "fp32"),
        _qwen("3B", 3.09, "bf16", "bf16"),
        _qwen("7B", 7.62, "4bit", "bf16"),
        _qwen("14B", 14.7, "4bit", "bf16"),
        _qwen("7B", 7.62, "4bit", "bf16", prefix="Qwen2.5-Coder"),
        # Random weights, real architecture: every code path runs offline on a CPU.
        ModelSpec(TINY, None, None, None, "fp32", "fp32", 0.005),
    )
}
DEFAULT_CUDA = "Qwen2.5-7B-Instruct"
DEFAULT_CPU = "Qwen2.5-0.5B-Instruct"


def pick_device(requested: str = "auto") -> str:
    if requested not in DEVICES:
        raise LabError(f"Unknown device '{requested}'; choose one of {', '.join(DEVICES)}.")
    if requested == "cpu":
        return "cpu"
    if runtime.cuda_available():
        return "cuda"
    if requested == "cuda":
        raise LabError(
            "--device cuda was asked for but PyTorch sees no CUDA GPU "
            f"(torch {runtime.torch.__version__}); use --device cpu or install a CUDA build of PyTorch."
        )
    return "cpu"


def resolve_spec(name: str | None, device: str, gguf_file: str | None = None) -> ModelSpec:
    """Turn what the user typed into a ModelSpec, or say in one sentence why it cannot be."""
    if gguf_file is not None or (name and name.strip().lower().endswith(".gguf")):
        return _gguf_spec(name.strip() if name else None, gguf_file.strip() if gguf_file else None)
    if not name:
        return REGISTRY[DEFAULT_CUDA if device == "cuda" else DEFAULT_CPU]
    if name.strip().startswith("openai:"):  # served elsewhere: lab.models.remote reaches it
        return ModelSpec(name=name.strip())
    key = name.strip().casefold()
    for spec in REGISTRY.values():
        if key in (spec.name.casefold(), (spec.hub_id or "").casefold()):
            return spec
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LabError(f"{path} is a directory without a config.json, so it is not a Transformers checkpoint.")
        return ModelSpec(name=path.name or str(path), path=str(path.resolve()))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise LabError(f"There is no checkpoint directory at {path}; check the path, or use --model {TINY} offline.")
    if HUB_ID.match(name):
        return ModelSpec(name=name, hub_id=name)
    known = ", ".join(REGISTRY)
    raise LabError(
        f"'{name}' is not a known model name, a local checkpoint directory or a Hub id like "
        f"Qwen/Qwen2.5-7B-Instruct; known names are: {known}."
    )


def _gguf_spec(name: str | None, gguf_file: str | None) -> ModelSpec:
    """A GGUF: a local file, a file in a local folder, or a file in a Hub repository. On CUDA `auto` keeps the
    dequantized weights in bf16 (the file is quantized already; --quant 4bit/8bit re-quantizes on purpose)."""
    def local(file: Path) -> ModelSpec:
        if not file.is_file():
            raise LabError(f"There is no GGUF file at {file}; check the path.")
        file = file.resolve()
        return ModelSpec(name=file.name, path=str(file.parent), gguf_file=str(file), cuda_quant="bf16")

    if name and name.startswith("openai:"):
        raise LabError("--gguf-file names a file loaded here; a model behind an OpenAI-compatible server has none.")
    if name and name.casefold() == TINY:
        raise LabError(f"{TINY} is no GGUF file; give --model PATH.gguf, or a Hub id with --gguf-file NAME.")
    if gguf_file is None:  # the model name is the file: a local path, or owner/name/file.gguf on the Hub
        path = Path(name).expanduser()
        hub = HUB_GGUF.match(name)
        if path.is_file() or not hub or name.startswith((".", "/", "~")):
            return local(path)
        return ModelSpec(name=name, hub_id=hub.group(1), gguf_file=hub.group(2), cuda_quant="bf16")
    if not gguf_file.lower().endswith(".gguf"):
        raise LabError(f"--gguf-file names a .gguf file, and '{gguf_file}' is not one.")
    if not name:
        return local(Path(gguf_file).expanduser())
    folder = Path(name).expanduser()
    if folder.is_dir():
        return local(folder / gguf_file)
    spec = next((s for s in REGISTRY.values() if name.casefold() in (s.name.casefold(), (s.hub_id or "").casefold())),
                None)
    hub_id = spec.hub_id if spec and spec.hub_id else name
    if not HUB_ID.match(hub_id):
        raise LabError(f"--gguf-file {gguf_file} needs --model to be a Hub id (owner/name) or a local folder, "
                       f"and '{name}' is neither.")
    return ModelSpec(name=f"{hub_id}/{gguf_file}", hub_id=hub_id, gguf_file=gguf_file, cuda_quant="bf16")


def check_quant_possible(quant: str, device: str) -> None:
    """Fail before any download when the requested quantization cannot run here."""
    if quant not in QUANTS:
        raise LabError(f"Unknown quantization '{quant}'; choose one of {', '.join(QUANTS)}.")
    if quant in ("4bit", "8bit"):
        if device != "cuda":
            raise LabError(
                f"--quant {quant} uses bitsandbytes, which needs an NVIDIA GPU with CUDA, and this run has none; "
                "use --quant auto (fp32 or bf16 on the CPU) or run on a CUDA machine."
            )
        if not runtime.bnb_available():
            raise LabError(
                f"--quant {quant} needs bitsandbytes, which is not installed; "
                "install it with pip install -e '.[gpu]' or choose --quant bf16."
            )


def resolve_quant(requested: str, spec: ModelSpec, device: str,
                  checkpoint_bytes: int | None = None) -> tuple[str, list[str]]:
    """The quantization to load with, and notes for the page when `auto` had to fall back."""
    check_quant_possible(requested, device)
    notes: list[str] = []
    if requested != "auto":
        quant = requested
    elif device == "cpu":
        quant = spec.cpu_quant
    else:
        quant = spec.cuda_quant or _fit_quant(checkpoint_bytes)
        if quant in ("4bit", "8bit") and not runtime.bnb_available():
            notes.append(f"bitsandbytes is not installed, so {spec.name} loads in 16-bit instead of {quant}")
            quant = "bf16"
    if quant == "bf16" and device == "cuda" and not runtime.bf16_supported():
        notes.append("this GPU has no bf16 support, so the model runs in fp16")
        quant = "fp16"
    return quant, notes


def _fit_quant(checkpoint_bytes: int | None) -> str:
    """For a model outside the registry: 16-bit if it fits in 80% of free GPU memory, else 4-bit."""
    free = runtime.gpu_free_bytes()
    if checkpoint_bytes is None or free is None or checkpoint_bytes < 0.8 * free:
        return "bf16"
    return "4bit"


def fetch_checkpoint(hub_id: str) -> str:
    """A local directory with the model's files: from the cache, else downloaded from the Hub."""
    from huggingface_hub import snapshot_download

    return _from_hub(hub_id, lambda **kw: snapshot_download(hub_id, allow_patterns=WEIGHT_PATTERNS, **kw))


def fetch_gguf(hub_id: str, filename: str) -> str:
    """The local path of one GGUF file of a Hub repository: from the cache, else downloaded."""
    from huggingface_hub import hf_hub_download

    return _from_hub(f"{hub_id}/{filename}", lambda **kw: hf_hub_download(hub_id, filename, **kw))


def _from_hub(what: str, download) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return download(local_files_only=True)
    except Exception:
        pass  # not cached (or only partly): try the Hub
    fallback = f"use --model {TINY} for the offline model, or --model PATH for a local checkpoint"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise LabError(f"{what} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {fallback}.")
    try:
        return download()
    except GatedRepoError:
        raise LabError(f"{what} is gated on the Hugging Face Hub; accept its licence there and log in "
                       f"(hf auth login), or {fallback}.") from None
    except RepositoryNotFoundError:
        raise LabError(f"There is no model {what} on the Hugging Face Hub (or it is private and you are not "
                       f"logged in); {fallback}.") from None
    except RemoteEntryNotFoundError:  # the repository is there, the file is not
        raise LabError(f"The Hugging Face Hub has no file {what}; check its name in the repository's file list.") \
            from None
    except LocalEntryNotFoundError:  # what the hub client raises when it cannot connect
        raise LabError(f"{what} is not in the local Hugging Face cache and the Hub cannot be reached; "
                       f"{fallback}.") from None
    except Exception as e:  # timeouts, disk full, ...
        raise LabError(
            f"{what} is not in the local Hugging Face cache and could not be downloaded "
            f"({type(e).__name__}); {fallback}."
        ) from None


def checkpoint_bytes(path: str | Path) -> int:
    """The weights' size on disk: a checkpoint folder's safetensors, or one GGUF file."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))
