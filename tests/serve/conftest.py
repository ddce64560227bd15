"""`python -m lab.serve --model tiny-random` without a key, in a subprocess on a free port, shared by the client
tests of this folder (the openai SDK's, lm-eval's)."""

from __future__ import annotations

import pytest

from tests.conftest import serving


@pytest.fixture(scope="session")
def open_server():
    with serving(["-m", "lab.serve", "--model", "tiny-random"], "serve-open-server.log") as url:
        yield url
