"""What a GGUF file holds, read before Transformers loads it: its architecture, the quantization type it names
(Q4_K_M, Q8_0, ...) and whether every tensor type in it is one Transformers can dequantize.

Transformers loads a GGUF (`from_pretrained(dir, gguf_file=NAME)`) by dequantizing every tensor into the compute
dtype: for most architectures with the `gguf` package's numpy dequantizers, for the few its newer reader covers
with its own. A type neither knows would end deep in that loop as a NotImplementedError, so `inspect_gguf` asks the
same dequantizer first, one zero block per type, and says so in one sentence.
"""

from __future__ import annotations

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


def _file_type_name(reader, tensor_names: Counter) -> str:
    from gguf import LlamaFileType

    field = reader.fields.get("general.file_type")
    if field is not None:
        try:
            kind = LlamaFileType(int(field.parts[field.data[0]][0]))
        except ValueError:
            kind = None
        if kind is not None and kind != LlamaFileType.GUESSED:
            return kind.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    # No (or an unknown) file type: name it after the type most of its matrices are stored in.
    return tensor_names.most_common(1)[0][0] if tensor_names else "F32"


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
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # a truncated file, an unknown tensor type id, a newer GGUF version
        raise LabError(f"{path} is a damaged GGUF file or one of a version the gguf package cannot read "
                       f"({type(e).__name__}); download it again or update gguf.") from None
    field = reader.fields.get("general.architecture")
    if field is None:
        raise LabError(f"{path} names no architecture (general.architecture), so Transformers cannot load it.")
    architecture = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    counts = Counter(t.tensor_type.name for t in reader.tensors)
    matrices = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) > 1)
    unreadable = sorted({t.tensor_type for t in reader.tensors if not _dequantizable(t.tensor_type, architecture)})
    if unreadable:
        names = ", ".join(q.name for q in unreadable)
        raise LabError(f"{path.name} stores tensors as {names}, which Transformers cannot dequantize; "
                       "choose a file of another quantization (Q8_0, Q4_K_M, ...).")
    return GgufFacts(str(path), architecture, _file_type_name(reader, matrices), dict(counts))
