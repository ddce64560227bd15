"""What a GGUF file holds, read before Transformers loads it: its architecture, the quantization type it names
(Q4_K_M, Q8_0, ...) and whether every tensor type in it is one Transformers can dequantize.

Transformers loads a GGUF (`from_pretrained(dir, gguf_file=NAME)`) by dequantizing every tensor into the compute
dtype: for most architectures with the `gguf` package's numpy dequantizers, for the few its newer reader covers
with its own. A type neither knows would end deep in that loop as a NotImplementedError, so `inspect_gguf` asks the
same dequantizer first, one zero block per type, and says so in one sentence.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab.errors import LabError

FLOATS = ("F32", "F16", "BF16")  # values, not blocks


@dataclass(frozen=True)
class GgufFacts:
    path: str
    architecture: str
    file_type: str  # what the file calls itself: "Q4_K_M", "Q8_0", "F16" ... (general.file_type, else its tensors)
    tensor_types: dict[str, int]  # type name -> tensors of that type, e.g. {"Q4_K": 169, "Q6_K": 29, "F32": 141}

    def detail(self) -> str:
        mix = ", ".join(f"{n} {name}" for name, n in sorted(self.tensor_types.items(), key=lambda kv: -kv[1]))
        return f"GGUF {self.file_type} ({mix} tensors)"


_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


def read_header(path: str | Path) -> tuple[dict, list[tuple[str, int, int]]]:
    """The scalar metadata of a GGUF file and its tensor table [(name, dimensions, ggml type id)], read straight
    from the format (little-endian, v2 and v3). Arrays (the vocabulary, the merges) are skipped, not decoded:
    gguf's GGUFReader takes most of a minute over a 150K-token vocabulary, this a fraction of a second."""
    import mmap

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as blob:
        _, tensor_count, kv_count = struct.unpack_from("<IQQ", blob, 4)
        pos, metadata = 24, {}

        def value(kind: int, pos: int):
            if kind in _FIXED:
                return struct.unpack_from("<" + _FIXED[kind], blob, pos)[0], pos + struct.calcsize(_FIXED[kind])
            if kind == STRING:
                (n,) = struct.unpack_from("<Q", blob, pos)
                return bytes(blob[pos + 8:pos + 8 + n]).decode("utf-8", "replace"), pos + 8 + n
            if kind == ARRAY:
                element, count = struct.unpack_from("<IQ", blob, pos)
                pos += 12
                if element in _FIXED:
                    return None, pos + count * struct.calcsize(_FIXED[element])
                if element == STRING:  # walk the lengths, decode nothing
                    for _ in range(count):
                        pos += 8 + struct.unpack_from("<Q", blob, pos)[0]
                    return None, pos
                for _ in range(count):
                    _, pos = value(element, pos)
                return None, pos
            raise ValueError(f"unknown metadata value type {kind}")

        for _ in range(kv_count):
            key, pos = value(STRING, pos)
            (kind,) = struct.unpack_from("<I", blob, pos)
            metadata[key], pos = value(kind, pos + 4)
        tensors = []
        for _ in range(tensor_count):
            name, pos = value(STRING, pos)
            (dims,) = struct.unpack_from("<I", blob, pos)
            ggml_type = struct.unpack_from("<I", blob, pos + 4 + 8 * dims)[0]
            tensors.append((name, dims, ggml_type))
            pos += 4 + 8 * dims + 4 + 8
    return metadata, tensors


def _file_type_name(file_type, matrices: Counter) -> str:
    from gguf import LlamaFileType

    try:
        kind = LlamaFileType(int(file_type)) if file_type is not None else None
    except ValueError:
        kind = None
    if kind is not None and kind != LlamaFileType.GUESSED:
        return kind.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    # No (or an unknown) file type: name it after the type most of its matrices are stored in.
    return matrices.most_common(1)[0][0] if matrices else "F32"


def _dequantizable(qtype, architecture: str) -> bool:
    """Whether the dequantizer Transformers will use for this architecture reads `qtype`."""
    try:  # Transformers 5.24+: a few architectures go through its own reader and dequantizer
        from transformers.integrations.gguf.dequant import GGML_BLOCK
        from transformers.integrations.gguf.utils import is_gguf_arch_supported
    except ImportError:
        GGML_BLOCK, is_gguf_arch_supported = None, lambda arch: False
    if qtype.name in FLOATS:
        return True
    if is_gguf_arch_supported(architecture):
        return int(qtype) in GGML_BLOCK
    from gguf import GGML_QUANT_SIZES, quants

    _, block_bytes = GGML_QUANT_SIZES[qtype]
    try:
        quants.dequantize(np.zeros((1, block_bytes), np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


def inspect_gguf(path: str | Path) -> GgufFacts:
    """The file's facts, or one sentence saying why Transformers cannot load it."""
    path = Path(path)
    if not path.is_file():
        raise LabError(f"There is no GGUF file at {path}; check the path.")
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise LabError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes).")
    from gguf import GGMLQuantizationType

    try:
        metadata, table = read_header(path)
        types = [(name, dims, GGMLQuantizationType(ggml_type)) for name, dims, ggml_type in table]
    except (struct.error, ValueError, UnicodeDecodeError, OSError) as e:  # cut short, an unknown type id, ...
        raise LabError(f"{path} is a damaged GGUF file or one of a version the gguf package cannot read "
                       f"({type(e).__name__}); download it again or update gguf.") from None
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise LabError(f"{path} names no architecture (general.architecture), so Transformers cannot load it.")
    counts = Counter(q.name for _, _, q in types)
    matrices = Counter(q.name for _, dims, q in types if dims > 1)
    unreadable = sorted({q for _, _, q in types if not _dequantizable(q, architecture)})
    if unreadable:
        names = ", ".join(q.name for q in unreadable)
        raise LabError(f"{path.name} stores tensors as {names}, which Transformers cannot dequantize; "
                       "choose a file of another quantization (Q8_0, Q4_K_M, ...).")
    return GgufFacts(str(path), architecture, _file_type_name(metadata.get("general.file_type"), matrices),
                     dict(counts))
