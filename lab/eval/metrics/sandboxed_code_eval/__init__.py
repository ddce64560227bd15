"""The `sandboxed_code_eval` metric's folder; `evaluate.load` reads sandboxed_code_eval.py beside this file."""
