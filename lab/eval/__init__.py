"""The evaluation engine: a benchmark is one YAML spec in evals/ (`spec`), its rows (`data`), and its kind
(`kinds/`: choice, code) that plans, runs and scores it; the `runner` is kind-agnostic and writes every batch
to the run history (`store`); `report` turns runs into tables; `sandbox/` runs model-written code. The CLI
is `python -m lab.eval`."""
