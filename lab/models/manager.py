"""The model the app is serving, and switching it.

One `ModelManager` is shared by every tab and every visitor of a running app. Switching models
drops the old one first (its GPU memory goes back before the new weights arrive); if the new one
fails to load, the previous one is loaded again and the error says so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from lab.errors import LabError


@dataclass(frozen=True)
class LoadRequest:
    model: str | None = None
    quant: str = "auto"
    device: str = "auto"
    double_quant: bool = True
    context: int | None = None  # None: the model's own
    gguf_file: str | None = None  # a GGUF file in the Hub repository or folder `model` (lab.models.load_model)


class ModelManager:
    def __init__(self, loader=None) -> None:
        if loader is None:
            from lab.models import load_model as loader
        self._loader = loader
        self._model = None
        self._request: LoadRequest | None = None
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
        """Drop the model (its memory goes back); `model` then says that none is loaded."""
        if self._model is not None:
            model, self._model = self._model, None
            model.close()
