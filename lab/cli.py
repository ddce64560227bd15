"""What the commands share: the model flags of `app.py`, `python -m lab.serve` and `python -m lab.eval`, the load
request they make, and how a command ends on a user's mistake (one sentence on stderr, exit status 2).

    add_model_flags(parser)                  # --model --gguf-file --quant --no-double-quant --device --context
    add_concurrency_flag(parser)             # --concurrency: requests in flight to an openai: server
    parser.add_argument("--seed", type=number("seed"))   # the one rule for numbers: a LabError while parsing
    manager.load(load_request(args))
    sys.exit(user_errors(main)(argv))        # a LabError: "error: <sentence>", status 2
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Callable

from lab.errors import LabError
from lab.interface import check_number
from lab.models.manager import LoadRequest
from lab.models.registry import DEVICES, QUANTS

MODEL_HELP = ("registry name, Hub id (owner/name), local checkpoint directory, a GGUF file (path/to/file.gguf, or "
              "owner/name/file.gguf on the Hub), or openai:BASE_URL#MODEL for a model behind an OpenAI-compatible "
              "server; default: Qwen2.5-7B-Instruct on CUDA, Qwen2.5-0.5B-Instruct on a CPU; tiny-random works "
              "offline")


def add_model_flags(p: argparse.ArgumentParser, env: bool = True) -> None:
    """The flags that say which model to load and how. `env`: LAB_MODEL, LAB_QUANT and LAB_DEVICE give the
    defaults (what a Space sets)."""
    get = os.environ.get if env else (lambda name, default=None: default)
    p.add_argument("--model", default=get("LAB_MODEL"), help=MODEL_HELP)
    p.add_argument("--gguf-file", default=get("LAB_GGUF_FILE"), metavar="NAME",
                   help="a GGUF file in the Hub repository (or local folder) --model names, e.g. "
                        "--model Qwen/Qwen2.5-7B-Instruct-GGUF --gguf-file qwen2.5-7b-instruct-q4_k_m.gguf; its "
                        "weights are dequantized into --quant's dtype (4bit/8bit re-quantize them on CUDA)")
    p.add_argument("--quant", default=get("LAB_QUANT", "auto"), choices=QUANTS,
                   help="auto: 4-bit for 7B+ on CUDA, 16-bit for smaller models, fp32/bf16 on a CPU")
    p.add_argument("--no-double-quant", action="store_true", help="4-bit without quantizing the scales")
    p.add_argument("--device", default=get("LAB_DEVICE", "auto"), choices=DEVICES)
    p.add_argument("--context", type=number("context"), metavar="TOKENS",
                   help="token budget: below the model's own context it caps it; above, YaRN stretches RoPE "
                        "(Qwen2.5-7B: up to 131072)")


def add_concurrency_flag(p: argparse.ArgumentParser) -> None:
    """--concurrency N: how many requests a model behind a server (openai:URL#NAME) keeps in flight, so a
    data-parallel deployment (vLLM's replicas, lab.serve's batching) has work for every replica."""
    from lab.models.remote import WORKERS

    p.add_argument("--concurrency", type=number("workers", "--concurrency"), metavar="N",  # workers' range: 1-1,024
                   help=f"requests in flight at once to an openai: server (default {WORKERS}, LAB_CONCURRENCY); "
                        "match the deployment's replicas times the batch each keeps full")


def number(field: str, flag: str | None = None) -> Callable[[str], int | float]:
    """An argparse `type` for the flag --FIELD (underscores as dashes; `flag` names another) under the one rule
    for numbers (`lab.interface.LIMITS[field]`): the number, or a LabError, which the command ends with as every
    user error: "error: --seed must be ...", exit status 2 (`user_errors`)."""
    flag = flag or "--" + field.replace("_", "-")

    def parse(text: str) -> int | float:
        try:
            return check_number(field, text, flag)
        except ValueError as e:
            raise LabError(f"{e}.") from None

    parse.__name__ = flag[2:].replace("-", "_")  # argparse names the type in some messages
    return parse


def load_request(args: argparse.Namespace, model: str | None = None, quant: str | None = None) -> LoadRequest:
    """The load request the flags ask for (`model` and `quant` override them, as a resumed run does)."""
    gguf_file = None if model else getattr(args, "gguf_file", None)  # another model named: not this file
    return LoadRequest(model or args.model, quant or args.quant, args.device, not args.no_double_quant, args.context,
                       gguf_file)


def user_errors(main: Callable[..., int]) -> Callable[..., int]:
    """`main` as a command: a LabError it raises is printed as one sentence and ends it with status 2."""
    @functools.wraps(main)
    def command(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except LabError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return command
