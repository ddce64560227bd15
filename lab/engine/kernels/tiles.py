"""The tiles each kernel timed fastest, kept per GPU from one process to the next.

A product's first call times every candidate tile (each compiled, captured and replayed as a CUDA graph): a few
tenths of a second per shape and row count, seconds over a 7B's decode shapes at the row counts the page and the
server use, on every load. The choice depends on the GPU, the Triton version and the kernel's own code, so each
kernel keeps one JSON file under LAB_CACHE_DIR/kernels/ named by all three; a later process takes its choices
from there instead of timing again (and while a CUDA graph is captured, when nothing can be timed, it still has
them). A kernel whose code changes gets a new file.

    LAB_KERNELS_RETIME=1   time every product again (the new choices replace the file's)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from lab import config


def _index(device) -> int:
    import torch

    return device.index if device.index is not None else torch.cuda.current_device()


def gpu_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(_index(device))


class Table:
    """Tiles of one kernel by product key (a tuple of numbers, flags, dtypes and strings), per GPU name."""

    def __init__(self, kernel: str, tile_type: type, sources: list[str]) -> None:
        self.kernel, self.tile_type, self.sources = kernel, tile_type, sources
        self._files: dict[str, dict] = {}  # GPU name -> its file's choices, as read or written here
        self._known: dict[tuple, object] = {}  # (GPU index, product key) -> its tile, for this process's launches
        self._lock = threading.Lock()

    def choose(self, key: tuple, device, default, time: Callable[[], object]):
        """This product's tile: the one chosen before (here, or by an earlier process on this GPU), else `default`
        while a CUDA graph is being captured (nothing can be timed then), else the one `time()` picks, kept."""
        tile = self.known(key, device)
        if tile is None:
            import torch

            if torch.cuda.is_current_stream_capturing():
                return default
            tile = self._known[(_index(device), key)] = time()
            self.put(key, tile, gpu_name(device))
        return tile

    def known(self, key: tuple, device):
        """The tile chosen for this product on `device`'s GPU, by this process or an earlier one; None if none."""
        where = (_index(device), key)
        tile = self._known.get(where)
        if tile is None:
            tile = self.get(key, gpu_name(device))
            if tile is not None:
                self._known[where] = tile
        return tile

    def path(self, gpu: str) -> Path:
        import triton

        digest = hashlib.sha256(b"".join(Path(s).read_bytes() for s in self.sources)).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-").lower()
        return config.cache_dir() / "kernels" / f"{self.kernel}-{slug}-triton{triton.__version__}-{digest}.json"

    def _choices(self, gpu: str) -> dict:
        if gpu not in self._files:
            self._files[gpu] = {}
            if os.environ.get("LAB_KERNELS_RETIME", "0") != "1":
                try:
                    data = json.loads(self.path(gpu).read_text())
                    self._files[gpu] = {k: v for k, v in data.get("tiles", {}).items() if isinstance(v, dict)}
                except (OSError, ValueError, AttributeError):
                    pass  # none yet, or unreadable: time again
        return self._files[gpu]

    def get(self, key: tuple, gpu: str):
        with self._lock:
            fields = self._choices(gpu).get(repr(key))
        try:
            return None if fields is None else self.tile_type(**fields)
        except TypeError:  # a field the tile no longer has
            return None

    def put(self, key: tuple, tile, gpu: str) -> None:
        with self._lock:
            choices = self._choices(gpu)
            choices[repr(key)] = dataclasses.asdict(tile)
            path = self.path(gpu)
            try:  # another process's choices for other products are kept
                theirs = json.loads(path.read_text()).get("tiles", {}) if path.exists() else {}
            except (OSError, ValueError, AttributeError):
                theirs = {}
            merged = {**theirs, **choices}
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
                    json.dump({"kernel": self.kernel, "gpu": gpu, "tiles": merged}, f, indent=1, sort_keys=True)
                os.replace(f.name, path)
            except OSError:
                pass  # a read-only cache: this process keeps its choices in memory
