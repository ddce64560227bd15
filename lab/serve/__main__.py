"""`python -m lab.serve --model tiny-random`: the OpenAI-compatible server (lab/serve/app.py has the flags)."""

import sys

from lab.serve.app import main

sys.exit(main())
