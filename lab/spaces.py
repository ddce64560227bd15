"""`python -m lab.spaces` is the earlier name of `python -m lab.space`; the command still works."""

from lab.space import main

if __name__ == "__main__":
    raise SystemExit(main())
