"""Qwen Lab: the web page.

    python app.py                                   # Qwen2.5-7B-Instruct in 4-bit on CUDA, 0.5B on a CPU
    python app.py --model tiny-random               # offline: random weights, any CPU
    python app.py --model Qwen/Qwen2.5-3B-Instruct --quant bf16 --port 7861
    python app.py --host 0.0.0.0 --auth alice:secret
    python app.py --api --api-key secret            # also the OpenAI-compatible /v1 routes (lab.serve) on this port
    python app.py --model openai:http://127.0.0.1:8000/v1#Qwen2.5-7B-Instruct   # a model on a server

Imported (a Hugging Face Space, `gradio app.py`), the flags come from LAB_MODEL, LAB_QUANT and
LAB_DEVICE instead, and `demo` is the module-level Blocks.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page phones nobody

if os.environ.get("SPACE_ID"):  # a Hugging Face Space: ZeroGPU needs `spaces` imported before torch touches CUDA
    try:
        import spaces  # noqa: F401
    except ImportError:  # not installed: no ZeroGPU here, and lab.space.gpu stays a no-op
        pass

from lab.cli import add_model_flags, load_request, number  # noqa: E402
from lab.errors import LabError  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    on_space = bool(os.environ.get("SPACE_ID"))
    p = argparse.ArgumentParser(prog="app.py", description="Qwen Lab: chat with and measure local LLMs.")
    add_model_flags(p)
    p.add_argument("--data-dir", help="benchmark data and tokenizer folder (sets LAB_DATA_DIR)")
    p.add_argument("--runs-dir", help="folder of the evaluation history, lab.db (sets LAB_RUNS_DIR; default runs/)")
    p.add_argument("--host", default="0.0.0.0" if on_space else "127.0.0.1",
                   help="address to bind; the default serves this machine only")
    p.add_argument("--port", type=number("port"), default=os.environ.get("GRADIO_SERVER_PORT", "7860"))
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--auth", metavar="USER:PASS",
                   help="require this login: the page's login form, and with --api the /v1 routes as HTTP Basic")
    p.add_argument("--api", action="store_true",
                   help="also serve the OpenAI-compatible /v1 routes of lab.serve on this port")
    p.add_argument("--api-key", metavar="KEY",
                   help="key for an openai:BASE_URL#MODEL server (else LAB_API_KEY or OPENAI_API_KEY); with --api, "
                        "/v1 requests must also send it as 'Authorization: Bearer KEY'")
    return p.parse_args(argv)


def parse_auth(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise LabError("--auth takes USER:PASS, for example --auth alice:secret.")
    return user, password


def create(args: argparse.Namespace, manager=None):
    """Load the model and build the page; a user error ends the process with one sentence."""
    if args.api and args.share:
        print("error: --api serves through uvicorn, which cannot open a gradio.live link; leave out --share.",
              file=sys.stderr)
        raise SystemExit(2)
    if args.api_key:
        os.environ["LAB_API_KEY"] = args.api_key  # the remote backend reads it, for this model and any loaded later
    if args.data_dir:
        os.environ["LAB_DATA_DIR"] = args.data_dir
    if args.runs_dir:
        os.environ["LAB_RUNS_DIR"] = args.runs_dir
    from lab.models.manager import ModelManager

    manager = manager or ModelManager()
    try:
        parse_auth(args.auth)
        print("Loading model…", file=sys.stderr, flush=True)
        model = manager.load(load_request(args))
        print(f"Loaded {model.info.summary()}", file=sys.stderr, flush=True)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from lab.ui import build_app  # Gradio loads only once the model did

    return build_app(manager)


try:
    args = parse_args(sys.argv[1:] if __name__ == "__main__" else [])
except LabError as e:  # a flag's number out of range: one sentence, status 2, as every user error
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
from lab.models.manager import ModelManager  # noqa: E402

manager = ModelManager()  # one model for the page and, with --api, for /v1
demo = create(args, manager)

if __name__ == "__main__":
    from lab.ui import LAUNCH  # theme, CSS, the head script and the footer's links

    if args.api:  # the page mounted onto lab.serve's FastAPI app, one port for both
        from lab.serve import launch_with_api

        launch_with_api(demo, manager, host=args.host, port=args.port, api_key=args.api_key,
                        auth=parse_auth(args.auth), show_error=True, **LAUNCH)
    else:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=parse_auth(args.auth),
                    show_error=True, **LAUNCH)
