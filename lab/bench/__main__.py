"""python -m lab.bench CASE [flags]: run a benchmark case and print its table.

Cases:
  chat         the chat path per quantization: weight and peak memory, time to first token, decode tok/s
  structured   decode speed with and without the JSON-mode grammar constraint
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile

from lab.errors import LabError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m lab.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="case", required=True)
    chat = sub.add_parser("chat", help="chat-path memory, first-token time and decode speed per quantization")
    chat.add_argument("--shape", choices=("7b", "tiny"), default="7b",
                      help="7b: Qwen2.5-7B-Instruct's exact shape with random weights; tiny: tiny-random")
    chat.add_argument("--quants", default="bf16,8bit,4bit", help="comma-separated: 4bit, 8bit, bf16, fp16, fp32")
    chat.add_argument("--prompt-tokens", type=int, default=512)
    chat.add_argument("--new-tokens", type=int, default=256)
    chat.add_argument("--repeats", type=int, default=3)
    chat.add_argument("--work-dir", default=tempfile.gettempdir(), help="where the random checkpoint is written")
    chat.add_argument("--out", help="folder for the results (.md and .json)")
    chat.add_argument("--append", action="store_true", help="add rows to the results already in --out")
    st = sub.add_parser("structured", help="what JSON mode costs in decode speed")
    st.add_argument("--shape", choices=("7b", "tiny"), default="tiny")
    st.add_argument("--quants", default="fp32", help="comma-separated: 4bit, 8bit, bf16, fp16, fp32")
    st.add_argument("--prompt-tokens", type=int, default=128)
    st.add_argument("--new-tokens", type=int, default=256)
    st.add_argument("--repeats", type=int, default=5)
    st.add_argument("--work-dir", default=tempfile.gettempdir(), help="where the random checkpoint is written")
    st.add_argument("--out", help="folder for the results (.md and .json)")
    args = p.parse_args(argv)
    args.command_line = "python -m lab.bench " + shlex.join(argv)
    try:
        if args.case == "chat":
            from lab.bench.chat import run

            return run(args)
        if args.case == "structured":
            from lab.bench.structured import run as run_structured

            return run_structured(args)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
