"""The OpenAI-compatible server over the model layer (`python -m lab.serve`, `app.py --api`)."""

from lab.serve.app import build_api, build_mounted, launch_with_api

__all__ = ["build_api", "build_mounted", "launch_with_api"]
