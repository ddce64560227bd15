"""Random-weight checkpoints: `tiny-random` (the offline model) and full-size shapes for GPU benchmarks.

`tiny-random` is a Qwen2-architecture model of a few MB with seeded random weights. It is written
once to the local cache (`LAB_CACHE_DIR`, default ~/.cache/qwen-lab) and then loaded through the
same `from_pretrained` path as any real checkpoint, so every code path runs offline on a CPU.
Its replies are noise. Its tokenizer is the real Qwen2.5 one when `LAB_DATA_DIR/qwen2.5-tokenizer`
exists, otherwise a small byte-level BPE the project trains here, with a ChatML chat template.

    python -m lab.models.tiny     # build (if needed) and print the cached checkpoint's path
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import torch

from lab import config

TINY_FORMAT = 3  # bump when the config or tokenizer recipe below changes
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, the prompt format Qwen2.5 uses; a system turn is added when the caller gives none.
# Tool calling has the same shape as Qwen2.5's template (the wording is ours): with `tools`, the
# system turn lists them as JSON lines between <tools></tools> and asks for <tool_call> blocks; an
# assistant message's `tool_calls` come back as those blocks; a run of tool messages is one user turn
# of <tool_response> blocks. Every tag opens with `-`, so the indentation below never reaches the
# prompt, and a chat without tools renders byte for byte as plain ChatML.
CHATML_TEMPLATE = r"""
{%- set default_system = 'You are a helpful assistant.' %}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages and messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- default_system }}
    {%- endif %}
    {{- '\n\n# Functions\n\nThese functions are available, one JSON signature per line' }}
    {{- ' inside <tools></tools>:\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' + (tool | tojson) }}
    {%- endfor %}
    {{- '\n</tools>\n\nTo call functions, answer with one block per call,' }}
    {{- ' a JSON object holding the name and the arguments:\n' }}
    {{- '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif not messages or messages[0]['role'] != 'system' %}
    {{- '<|im_start|>system\n' + default_system + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if loop.first and message['role'] == 'system' and tools %}
        {#- already written into the tools system turn above #}
    {%- elif message['role'] == 'tool' %}
        {%- if loop.first or loop.previtem['role'] != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + message['content'] + '\n</tool_response>' }}
        {%- if loop.last or loop.nextitem['role'] != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' and message['tool_calls'] %}
        {{- '<|im_start|>assistant' }}
        {%- if message['content'] %}
            {{- '\n' + message['content'] }}
        {%- endif %}
        {%- for call in message['tool_calls'] %}
            {%- set fn = call['function'] if call['function'] is defined else call %}
            {{- '\n<tool_call>\n{"name": ' + (fn['name'] | tojson) + ', "arguments": ' }}
            {#- OpenAI's wire format carries the arguments as a JSON string: write it as it is #}
            {%- if fn['arguments'] is string %}
                {{- fn['arguments'] }}
            {%- else %}
                {{- fn['arguments'] | tojson }}
            {%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


def qwen_tokenizer_dir() -> Path | None:
    """The real Qwen2.5 tokenizer under LAB_DATA_DIR, if it is there."""
    data = os.environ.get("LAB_DATA_DIR")
    if data and (Path(data) / "qwen2.5-tokenizer" / "vocab.json").is_file():
        return Path(data) / "qwen2.5-tokenizer"
    return None


def build_tokenizer():
    """A small byte-level BPE with ChatML specials, trained on the project's own prompt texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte has a token: nothing is unknown
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def _corpus():
    for f in sorted(config.prompts_dir().rglob("*.yaml")):
        yield f.read_text(encoding="utf-8")
    yield "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。def main():\n    return 0\n"


def load_tokenizer_for_tiny():
    from transformers import AutoTokenizer

    src = qwen_tokenizer_dir()
    return AutoTokenizer.from_pretrained(src) if src else build_tokenizer()


def tiny_config(tokenizer):
    from transformers import Qwen2Config

    ids = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in Qwen2.5
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=ids[2],
        pad_token_id=ids[0],
    )


def qwen_generation_config(tokenizer):
    """Qwen2.5-Instruct's sampling defaults, with its two end-of-turn tokens."""
    from transformers import GenerationConfig

    endoftext, _, im_end = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    return GenerationConfig(
        do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05,
        eos_token_id=[im_end, endoftext], pad_token_id=endoftext,
    )


def write_random_checkpoint(model_config, tokenizer, out_dir: str | Path, *, seed: int = 0,
                            dtype: torch.dtype = torch.float32, device: str = "cpu") -> Path:
    """Initialise a model of `model_config` with seeded random weights and save it like a real checkpoint."""
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype)
    model.generation_config = qwen_generation_config(tokenizer)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del model
    return out_dir


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # two processes building at once would race on the rename
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_tiny_checkpoint() -> Path:
    """The cached tiny-random checkpoint, built on first use."""
    kind = "qwen2.5" if qwen_tokenizer_dir() else "built"
    root = config.cache_dir()
    final = root / f"tiny-random-v{TINY_FORMAT}-{kind}"
    if (final / "config.json").is_file():
        return final
    with _locked(root / ".tiny-random.lock"):
        if (final / "config.json").is_file():
            return final
        tokenizer = load_tokenizer_for_tiny()
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
        try:
            write_random_checkpoint(tiny_config(tokenizer), tokenizer, tmp, seed=0)
            os.replace(tmp, final)  # atomic: readers never see half a checkpoint
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


if __name__ == "__main__":
    print(ensure_tiny_checkpoint())
