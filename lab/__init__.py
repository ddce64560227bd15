"""Qwen Lab: a local playground and evaluation lab for open LLMs, Qwen2.5-7B-Instruct first.

The package is a library first: `lab.models` loads models, `lab.chat` holds conversation logic,
`lab.ui` is the Gradio page (a leaf that nothing else imports).
"""

__version__ = "0.1.0"
