"""Errors a user can cause.

A `LabError` carries one sentence that says what went wrong and what to do. The CLI prints it
and exits with status 2; the page shows it as a notice and keeps running. Anything else that
escapes is a bug and keeps its traceback.
"""


class LabError(Exception):
    """A user-facing failure whose message is one complete sentence."""
