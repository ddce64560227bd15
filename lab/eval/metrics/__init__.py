"""Hugging Face `evaluate` metrics that ship with the lab, each a folder `evaluate.load` takes as a path.

    import evaluate
    from lab.eval.metrics import SANDBOXED_CODE_EVAL
    metric = evaluate.load(SANDBOXED_CODE_EVAL)     # offline: the folder is on this machine
"""

from pathlib import Path

SANDBOXED_CODE_EVAL = str(Path(__file__).parent / "sandboxed_code_eval")
