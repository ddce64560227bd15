"""The kernel test files' interpreter process: the file run as a script with TRITON_INTERPRET=1 (the interpreter
is chosen before triton is imported, and a pytest session may have imported it already), printing its results as
one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_interpreted(script: str, unset: str, timeout: int) -> dict:
    """Run `script` under Triton's interpreter with `unset` (its switch, LAB_KERNELS or LAB_ATTENTION) at its
    default; the last line it prints, as JSON."""
    env = {k: v for k, v in os.environ.items() if k != unset} | {"TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
