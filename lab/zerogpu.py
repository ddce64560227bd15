"""ZeroGPU support: on a Hugging Face Space with ZeroGPU hardware, GPU work must run inside a function
decorated with `spaces.GPU`; everywhere else the decorator is a no-op.

    from lab.zerogpu import gpu

    @gpu(duration=120)          # seconds of GPU the call may hold on a Space
    def respond(...): ...

`on_space()` tells the UI to keep evaluations small there.
"""

from __future__ import annotations

import os


def on_space() -> bool:
    """True inside a Hugging Face Space (the platform sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def gpu(duration: int = 60):
    """`spaces.GPU(duration=...)` on a Space that has the `spaces` package; the function unchanged elsewhere."""

    def wrap(fn):
        if not on_space():
            return fn
        try:
            import spaces
        except ImportError:  # a Space on ordinary GPU or CPU hardware need not install it
            return fn
        if not hasattr(spaces, "GPU"):  # run from a checkout, `import spaces` finds its spaces/ folder
            return fn
        return spaces.GPU(duration=duration)(fn)

    return wrap
