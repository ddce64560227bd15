"""`pip install .` gives a working lab: every package listed, every imported library declared, evals/ and
prompts/ shipped as package data, and the CLI, the page and the server running from outside the checkout."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from tests.conftest import ROOT, free_port, stop, wait_until_serving

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Imported only where they exist: Hugging Face's `spaces` on a Space, pynvml beside some CUDA drivers.
OPTIONAL = {"spaces", "pynvml"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    deps = PROJECT["project"]["dependencies"] + [d for extra in PROJECT["project"]["optional-dependencies"].values()
                                                  for d in extra]
    return {canonical(re.match(r"[A-Za-z0-9_.-]+", d).group(0)) for d in deps}


def imported_libraries() -> set[str]:
    found = set()
    for path in list((ROOT / "lab").rglob("*.py")) + [ROOT / "app.py"]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        # A module beside the importer, imported by its bare name (the sandbox's harness runs standalone,
        # with its own folder on the path), is part of the project, not a library.
        found |= {n for n in names if not (path.parent / f"{n}.py").is_file()}
    return {m for m in found if m not in sys.stdlib_module_names and m not in ("lab", "__future__")} - OPTIONAL


def test_every_package_under_lab_is_listed():
    listed = set(PROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lab").rglob("__init__.py")}
    assert found <= listed, found - listed
    shipped = {p for p in listed if p.startswith("lab.shipped.")}
    assert {PROJECT["tool"]["setuptools"]["package-dir"][p] for p in shipped} == {"evals", "prompts", "prompts/compare"}


def test_every_imported_library_is_declared():
    owners = importlib.metadata.packages_distributions()
    missing = {}
    for module in imported_libraries():
        dists = {canonical(d) for d in owners.get(module, [module])}
        if not dists & declared():
            missing[module] = sorted(dists)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel `pip install .` would install, unpacked into a folder of its own (no dependencies: the test
    environment has them), and an empty working folder outside the checkout."""
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    target = tmp_path_factory.mktemp("site")
    wheel = next(out.glob("*.whl"))
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    return target


def outside(installed: Path, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_EVALS_DIR", "LAB_PROMPTS_DIR")}
    return {**env, "PYTHONPATH": str(installed), "LAB_RUNS_DIR": str(tmp_path / "runs")}


@pytest.mark.slow
def test_the_installed_package_scores_a_file_and_ships_its_data(installed, tmp_path, data_dir):
    env = outside(installed, tmp_path)
    where = subprocess.run([sys.executable, "-c", "import lab, lab.config as c; print(lab.__file__); "
                            "print(c.evals_dir()); print(c.prompts_dir())"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    lab_file, evals, prompts = where.stdout.split()
    assert lab_file.startswith(str(installed)) and Path(evals) == installed / "lab" / "shipped" / "evals"
    assert (Path(evals) / "mmlu.yaml").is_file() and (Path(prompts) / "compare").is_dir()
    from lab.eval.data import read_problems

    samples = tmp_path / "samples.jsonl"
    problems = read_problems(data_dir / "humaneval" / "HumanEval.jsonl.gz")[:3]
    samples.write_text("".join(json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n"
                               for p in problems))
    r = subprocess.run([sys.executable, "-m", "lab.eval", "humaneval", "--score", str(samples), "--data-dir",
                        str(data_dir)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "pass@1  1.000" in r.stdout and "3/3 programs passed" in r.stdout


@pytest.mark.slow
def test_the_installed_metric_loads_offline_with_evaluate(installed, tmp_path):
    """evaluate.load copies the metric's file into its own cache; from there it must import the installed lab."""
    env = {**outside(installed, tmp_path), "HF_EVALUATE_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}
    code = ("import json, sys, evaluate; from lab.eval.metrics import SANDBOXED_CODE_EVAL as P; m = evaluate.load(P); "
            "r = m.compute(references=['assert add(2,3)==5'], predictions=[['def add(a,b): return a+b']], k=[1]); "
            "print(json.dumps([P, sys.modules[type(m).__module__].__file__, sys.modules['lab'].__file__, r[0]]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    folder, copy, lab_file, pass_at_k = json.loads(r.stdout.splitlines()[-1])
    assert folder == str(installed / "lab" / "eval" / "metrics" / "sandboxed_code_eval")
    assert copy.startswith(str(tmp_path / "hf")) and lab_file.startswith(str(installed))
    assert pass_at_k == {"pass@1": 1.0}


@pytest.mark.slow
@pytest.mark.parametrize("command, ready", [(["app.py"], "/"), (["-m", "lab.serve"], "/health")])
def test_the_page_and_the_server_start_from_outside_the_checkout(installed, tmp_path, command, ready):
    if command[0] == "app.py":  # the page's entry file, copied beside nothing else
        shutil.copy(ROOT / "app.py", tmp_path / "app.py")
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *command, "--model", "tiny-random", "--port", str(port)],
                                cwd=tmp_path, env={**outside(installed, tmp_path), "PYTHONUNBUFFERED": "1"},
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until_serving(proc, f"http://127.0.0.1:{port}{ready}", log, " ".join(command), 180)
        finally:
            stop(proc)
    assert str(ROOT) not in log.read_text()
