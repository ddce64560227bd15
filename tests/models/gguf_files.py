"""Writing small GGUF files from a Transformers Qwen2 checkpoint, for the GGUF loading tests.

People download GGUF files, so the product never writes one; the tests need files whose every weight they know.
`write_gguf` writes a checkpoint's weights in one GGUF type with the `gguf` package's own writer and quantizers,
under llama.cpp's tensor names for qwen2 (token_embd, blk.N.attn_q, ..., output_norm), with the metadata keys
Transformers' GGUF loader turns back into a Qwen2Config and the tokenizer as tokenizer.ggml.* keys.
`roundtrip` gives the same weights quantized and dequantized by `gguf` itself: what a faithful loader must
produce from the file, so a test compares against it rather than against a loose tolerance.

As llama.cpp does, 1-D tensors (norms, biases) stay F32 and only matrices take the file's type.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, LlamaFileType, get_tensor_name_map, quants

# The types the gguf package can write (quantize) in Python, and the file type each names in general.file_type.
WRITABLE = {
    "F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16, "BF16": LlamaFileType.MOSTLY_BF16,
    "Q8_0": LlamaFileType.MOSTLY_Q8_0, "Q5_1": LlamaFileType.MOSTLY_Q5_1, "Q5_0": LlamaFileType.MOSTLY_Q5_0,
    "Q4_1": LlamaFileType.MOSTLY_Q4_1, "Q4_0": LlamaFileType.MOSTLY_Q4_0, "MXFP4": LlamaFileType.MOSTLY_MXFP4_MOE,
    "TQ2_0": LlamaFileType.MOSTLY_TQ2_0, "TQ1_0": LlamaFileType.MOSTLY_TQ1_0,
}


def gguf_type(name: str) -> GGMLQuantizationType:
    return GGMLQuantizationType[name]


def block_size(name: str) -> int:
    return GGML_QUANT_SIZES[gguf_type(name)][0]


def _stored_type(tensor: np.ndarray, qtype: GGMLQuantizationType) -> GGMLQuantizationType:
    if tensor.ndim < 2:
        return GGMLQuantizationType.F32
    if tensor.shape[-1] % GGML_QUANT_SIZES[qtype][0]:
        raise ValueError(f"a row of {tensor.shape[-1]} values is not whole blocks of {qtype.name}")
    return qtype


def _encode(tensor: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype == GGMLQuantizationType.F32:
        return tensor.astype(np.float32)
    if qtype == GGMLQuantizationType.F16:
        return tensor.astype(np.float16)
    return quants.quantize(tensor.astype(np.float32), qtype)  # BF16 and the block types: raw bytes


def roundtrip(state_dict: dict[str, torch.Tensor], type_name: str) -> dict[str, torch.Tensor]:
    """The weights as the file of `type_name` holds them: each quantized and dequantized by gguf's own code."""
    qtype = gguf_type(type_name)
    out = {}
    for name, value in state_dict.items():
        array = value.detach().float().numpy()
        stored = _stored_type(array, qtype)
        back = quants.dequantize(_encode(array, stored), stored).reshape(array.shape)
        out[name] = torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32))
    return out


def _merges(tokenizer) -> list[str]:
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def write_gguf(model, tokenizer, out: str | Path, type_name: str, *, architecture: str = "qwen2",
               name: str = "tiny-random", pre: str = "qwen2", file_type: int | None = None,
               unreadable: str | None = None) -> Path:
    """Write `model` (a Qwen2ForCausalLM) and `tokenizer` as one GGUF file of `type_name` (a key of WRITABLE).
    `pre` names the pre-tokenizer (Qwen2's split, which tiny-random's Qwen2Tokenizer uses too). `architecture`,
    `file_type` and `unreadable` (a type name: blk.0.attn_q is stored as zero blocks of it) write files a loader
    must refuse or name from their tensors."""
    cfg = model.config
    qtype = gguf_type(type_name)
    names = get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, cfg.num_hidden_layers)
    w = GGUFWriter(str(out), architecture)
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_file_type(int(WRITABLE[type_name] if file_type is None else file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    w.add_tokenizer_model("gpt2")  # byte-level BPE, as Qwen2.5's
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))])
    w.add_token_merges(_merges(tokenizer))
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    if tokenizer.chat_template:
        w.add_chat_template(tokenizer.chat_template)

    for hf_name, value in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # tied: no output.weight in the file, which is how the loader learns it is tied
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(base)
        assert gguf_name is not None, f"no llama.cpp name for {hf_name}"
        array = value.detach().float().numpy()
        stored = _stored_type(array, qtype)
        data = _encode(array, stored)
        if unreadable and f"{gguf_name}.{suffix}" == "blk.0.attn_q.weight":
            stored = gguf_type(unreadable)
            block, nbytes = GGML_QUANT_SIZES[stored]
            data = np.zeros((array.shape[0], array.shape[1] // block * nbytes), np.uint8)
        w.add_tensor(f"{gguf_name}.{suffix}", data, raw_dtype=stored)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(out)

