"""The kernels' timed tiles kept per GPU on disk (lab.engine.kernels.tiles): a later process reads them, another GPU,
Triton or kernel source does not, and a bad file only means timing again."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from lab.engine.kernels import int8_mm, nf4, tiles

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
KEY = (3584, 56, 1, True, False, torch.bfloat16, "prmt")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LAB_KERNELS_RETIME", raising=False)
    source = tmp_path / "kernel.py"
    source.write_text("# the kernel's code\n")
    return tmp_path, source


def table(source) -> tiles.Table:
    return tiles.Table("nf4", nf4.Tile, [str(source)])


def test_a_later_process_reads_the_tiles_this_one_timed(cache):
    root, source = cache
    table(source).put(KEY, nf4.Tile(1, 8, 4), "NVIDIA H200")
    table(source).put((18944, 56, 8, True, False, torch.bfloat16, "prmt"), nf4.Tile(4, 1, 8, 128), "NVIDIA H200")
    (path,) = (root / "kernels").iterdir()
    import triton

    assert path.name.startswith("nf4-nvidia-h200-triton" + triton.__version__) and path.suffix == ".json"
    fresh = table(source)  # a new process: nothing in memory
    assert fresh.get(KEY, "NVIDIA H200") == nf4.Tile(1, 8, 4)
    assert fresh.get((18944, 56, 8, True, False, torch.bfloat16, "prmt"), "NVIDIA H200") == nf4.Tile(4, 1, 8, 128)
    assert fresh.get((3584, 56, 2, True, False, torch.bfloat16, "prmt"), "NVIDIA H200") is None  # another row count
    assert json.loads(path.read_text())["gpu"] == "NVIDIA H200"


def test_another_gpu_or_changed_kernel_code_times_again(cache):
    _, source = cache
    table(source).put(KEY, nf4.Tile(1, 8, 4), "NVIDIA H200")
    assert table(source).get(KEY, "NVIDIA H100 80GB HBM3") is None
    source.write_text("# the kernel's code, changed\n")
    assert table(source).get(KEY, "NVIDIA H200") is None


def test_a_bad_file_or_retime_means_timing_again(cache, monkeypatch):
    _, source = cache
    t = table(source)
    path = t.path("NVIDIA H200")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert table(source).get(KEY, "NVIDIA H200") is None
    t.put(KEY, nf4.Tile(2, 8, 0), "NVIDIA H200")  # rewrites it whole
    assert table(source).get(KEY, "NVIDIA H200") == nf4.Tile(2, 8, 0)
    path.write_text(json.dumps({"tiles": {repr(KEY): {"warps": 2, "gone": 1}}}))  # a field the tile lost
    assert table(source).get(KEY, "NVIDIA H200") is None
    t.put(KEY, nf4.Tile(2, 8, 0), "NVIDIA H200")
    monkeypatch.setenv("LAB_KERNELS_RETIME", "1")
    assert table(source).get(KEY, "NVIDIA H200") is None


def test_two_processes_keep_each_others_tiles(cache):
    _, source = cache
    first, second = table(source), table(source)
    first.get(KEY, "NVIDIA H200")  # both read the (missing) file before either writes
    second.get(KEY, "NVIDIA H200")
    first.put(KEY, nf4.Tile(1, 8, 4), "NVIDIA H200")
    other = (512, 56, 1, True, False, torch.bfloat16, "prmt")
    second.put(other, nf4.Tile(4, 2, 16), "NVIDIA H200")
    fresh = table(source)
    assert fresh.get(KEY, "NVIDIA H200") == nf4.Tile(1, 8, 4) and fresh.get(other, "NVIDIA H200") == nf4.Tile(4, 2, 16)


def test_an_unwritable_cache_keeps_the_tiles_in_memory(cache, monkeypatch):
    root, source = cache
    blocker = root / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LAB_CACHE_DIR", str(blocker / "cache"))  # under a file: no folder can be made, even as root
    t = table(source)
    t.put(KEY, nf4.Tile(1, 8, 4), "NVIDIA H200")
    assert t.get(KEY, "NVIDIA H200") == nf4.Tile(1, 8, 4)
    assert table(source).get(KEY, "NVIDIA H200") is None


def test_the_kernels_tables_name_their_own_sources():
    """A change to any file of a kernel's code makes a new file (the NF4 kernels span three modules)."""
    assert {os.path.basename(p) for p in nf4.TABLE.sources} == {"nf4.py", "nf4_mma.py", "nf4_decode.py"}
    assert all(os.path.exists(p) for p in nf4.TABLE.sources + int8_mm.TABLE.sources)
    assert int8_mm.TABLE.tile_type is int8_mm.Tile and int8_mm.TABLE.kernel != nf4.TABLE.kernel


def test_choose_times_a_product_once_and_a_capture_gets_the_default(cache, monkeypatch):
    """What the kernels' launches call: a graph being captured gets the default and times nothing; otherwise the
    product is timed once, kept in memory and on disk, and a later process takes it from the file."""
    _, source = cache
    monkeypatch.setattr(tiles, "gpu_name", lambda device: "NVIDIA H200")
    gpu = torch.device("cuda", 0)
    timed = []

    def time() -> nf4.Tile:
        timed.append(1)
        return nf4.Tile(1, 8, 4)

    t = table(source)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert t.choose(KEY, gpu, nf4.DEFAULT, time) == nf4.DEFAULT and timed == [] and t.known(KEY, gpu) is None
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert t.choose(KEY, gpu, nf4.DEFAULT, time) == nf4.Tile(1, 8, 4)
    assert t.choose(KEY, gpu, nf4.DEFAULT, time) == nf4.Tile(1, 8, 4) and timed == [1]
    later = table(source)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)  # captured before any timing
    assert later.choose(KEY, gpu, nf4.DEFAULT, time) == nf4.Tile(1, 8, 4) and timed == [1]
    assert later.known(KEY, gpu) == nf4.Tile(1, 8, 4)
