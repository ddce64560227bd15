"""The models the app is serving, and switching them.

One `ModelManager` is shared by every tab and every visitor of a running app. Its `model` is the one the Chat
tab, Evaluate and lab.serve use. Switching it drops the old one first (its memory goes back before the new weights
arrive); if the new one fails to load, the previous one is loaded again and the error says so.

Compare may name other models and quantizations for its variants; the manager holds those beside the page's
model (`hold`, `release`), says what each would take before loading it (`want`: an estimate from the checkpoint
on disk, or the registry's parameter count, scaled to the quantization) and how much memory is free
(`free_bytes`), so lab.compare.placement can decide which stay loaded together and which run one after another.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from lab.errors import LabError

# Loaded bytes per parameter. 8bit and 4bit are the 7B shape's measured weights on the H200 (8.11 and 5.18 GiB
# against bf16's 14.19, lab/bench/results/quant-7b-h200): embeddings and norms stay 16-bit.
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "8bit": 2.0 * 8.11 / 14.19, "4bit": 2.0 * 5.18 / 14.19}
DISK_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
OVERHEAD = 1.15  # a Compare reply's key/value cache and activations beside the weights


@dataclass(frozen=True)
class LoadRequest:
    model: str | None = None
    quant: str = "auto"
    device: str = "auto"
    double_quant: bool = True
    context: int | None = None  # None: the model's own
    gguf_file: str | None = None  # a GGUF file in the Hub repository or folder `model` (lab.models.load_model)


@dataclass(frozen=True)
class Wanted:
    """A model a Compare variant asks for: how to load it, what the page calls it, what it would take."""

    request: LoadRequest
    key: str  # "tiny-random · bf16": the name and the quantization it resolves to
    bytes: int | None  # estimated memory once loaded (None: cannot tell before loading)


class ModelManager:
    def __init__(self, loader=None) -> None:
        if loader is None:
            from lab.models import load_model as loader
        self._loader = loader
        self._model = None
        self._request: LoadRequest | None = None
        self._extras: dict[str, object] = {}  # key -> a model Compare holds beside the page's
        self._lock = threading.Lock()

    @property
    def model(self):
        if self._model is None:
            raise LabError("No model is loaded; pick one in the Model panel and press Load.")
        return self._model

    @property
    def request(self) -> LoadRequest | None:
        """How the current model was asked for (None before the first load)."""
        return self._request

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self, request: LoadRequest):
        with self._lock:
            previous, self._request = self._request, request
            self.unload()
            try:
                self._model = self._load(request)
            except LabError as e:
                self._request = None
                if previous is None:
                    raise
                self._model = self._load(previous)
                self._request = previous
                raise LabError(
                    f"{str(e).rstrip('.')}; the previous model ({self._model.info.name}) is loaded again."
                ) from None
            return self._model

    def _load(self, r: LoadRequest):
        extra = {"gguf_file": r.gguf_file} if r.gguf_file else {}  # a loader without GGUF support still works
        return self._loader(r.model, r.quant, r.device, r.double_quant, r.context, **extra)

    def unload(self) -> None:
        """Drop the model and any Compare holds (their memory goes back); `model` then says that none is loaded."""
        self.release_extras()
        if self._model is not None:
            model, self._model = self._model, None
            model.close()

    # ---- several models, for Compare ------------------------------------------------------------
    def main_key(self) -> str | None:
        return key_of(self._model.info) if self._model is not None else None

    def want(self, model: str | None, quant: str | None) -> Wanted:
        """What a variant's model and quantization resolve to on this machine, checked before anything loads."""
        from lab.models import check_quant_possible, pick_device, resolve_quant, resolve_spec

        base = self._request or LoadRequest()
        name = (model or "").strip() or base.model or (self._model.info.name if self._model is not None else None)
        request = replace(base, model=name, quant=quant or "auto", gguf_file=None if model else base.gguf_file)
        if name and name.startswith("openai:"):
            if self._model is not None and self._model.info.device == "remote" and not model:
                return Wanted(self._request, self.main_key(), 0)
            return Wanted(request, f"{name} · remote", 0)  # served elsewhere: takes nothing here
        device = pick_device(request.device)
        spec = resolve_spec(name, device, request.gguf_file)
        check_quant_possible(request.quant, device)
        resolved, _ = resolve_quant(request.quant, spec, device)
        key = f"{spec.name} · {resolved}"
        if self._model is not None and key == self.main_key():
            return Wanted(self._request or request, key, self._model.info.weight_bytes)
        return Wanted(request, key, estimate_bytes(spec, resolved))

    def held(self) -> dict[str, int]:
        """Every model in memory (the page's and Compare's), by key, with its weights' bytes."""
        out = {key: m.info.weight_bytes for key, m in self._extras.items()}
        if self._model is not None:
            out[self.main_key()] = self._model.info.weight_bytes
        return out

    def hold(self, wanted: Wanted):
        """The model for `wanted`: the page's own, one held already, or loaded now and kept beside them."""
        with self._lock:
            if self._model is not None and wanted.key == self.main_key():
                return self._model
            if wanted.key not in self._extras:
                self._extras[wanted.key] = self._load(wanted.request)
            return self._extras[wanted.key]

    def release(self, key: str) -> None:
        """Free a model Compare held (the page's own stays)."""
        model = self._extras.pop(key, None)
        if model is not None:
            model.close()

    def release_extras(self) -> None:
        for key in list(self._extras):
            self.release(key)

    def free_bytes(self) -> int | None:
        """Memory free for another model where the page's models run: the GPU's, else the machine's available RAM."""
        from lab import runtime
        from lab.models import pick_device

        try:
            device = pick_device((self._request or LoadRequest()).device)
        except LabError:
            return None
        return runtime.gpu_free_bytes() if device == "cuda" else available_ram()


def key_of(info) -> str:
    return f"{info.name} · {info.quant}"


def estimate_bytes(spec, quant: str) -> int | None:
    """What a model takes loaded in `quant`: its parameters (from the checkpoint on disk, else the registry's
    count) times bytes per parameter, plus room for a reply; None when neither is known without downloading."""
    params = _params_on_disk(spec)
    if params is None and spec.params_b:
        params = spec.params_b * 1e9
    if params is None or quant not in BYTES_PER_PARAM:
        return None
    return int(params * BYTES_PER_PARAM[quant] * OVERHEAD)


def _params_on_disk(spec) -> float | None:
    from lab.models import TINY, checkpoint_bytes

    if spec.gguf_file:
        return None  # quantized on disk, dequantized on loading: the file's size does not tell
    path: Path | None = None
    if spec.name == TINY:
        from lab.models.tiny import ensure_tiny_checkpoint

        path = ensure_tiny_checkpoint()
    elif spec.path:
        path = Path(spec.path)
    elif spec.hub_id:
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(spec.hub_id, local_files_only=True))  # the cache only: never download
        except Exception:
            return None
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    per = DISK_BYTES.get(str(config.get("dtype") or config.get("torch_dtype") or "bfloat16"), 2)
    size = checkpoint_bytes(path)
    return size / per if size else None


def available_ram() -> int | None:
    """MemAvailable from /proc/meminfo (free plus what the page cache would give back); elsewhere, free pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
