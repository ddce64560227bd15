"""Shared fixtures. Tests run offline on a CPU: HF_HUB_OFFLINE is set, and tiny-random is built
into a temporary cache once per session.

Markers: `browser` (headless Chromium), `slow`, `gpu` (needs CUDA; deselected by default).
Tests that need the real data read LAB_DATA_DIR and are skipped without it, unless
LAB_REQUIRE_DATA=1 (CI sets it) turns the skip into a failure; LAB_REQUIRE_BROWSER=1 does the
same for a missing Chromium.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"

os.environ["HF_HUB_OFFLINE"] = "1"  # no test reaches the network
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("LAB_CACHE_DIR", tempfile.mkdtemp(prefix="qwen-lab-test-cache-"))
os.environ.setdefault("LAB_RUNS_DIR", tempfile.mkdtemp(prefix="qwen-lab-test-runs-"))  # the app's run history


def _require(flag: str, reason: str):
    if os.environ.get(flag) == "1":
        pytest.fail(f"{reason} ({flag}=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    value = os.environ.get("LAB_DATA_DIR")
    if not value or not Path(value).is_dir():
        _require("LAB_REQUIRE_DATA", "LAB_DATA_DIR does not name the benchmark data folder")
    return Path(value).resolve()  # absolute: tests hand it to programs started in other folders


@pytest.fixture(scope="session")
def qwen_tokenizer(data_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(data_dir / "qwen2.5-tokenizer")


def wait_scheduler_idle(model, timeout: float = 60) -> None:
    """Until the model's scheduler has no reply left (one an earlier test's client left is freed within a step,
    but its consumer may notice a moment later): tests that count steps or rows start from an empty batch."""
    sched, deadline = model.scheduler, time.monotonic() + timeout
    while sched is not None and sched.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sched is None or not sched.running, "the scheduler still has replies from an earlier test"


@pytest.fixture(scope="session")
def tiny():
    """tiny-random, loaded once for the whole session (the real Qwen2.5 tokenizer when LAB_DATA_DIR has it)."""
    from lab.models import load_model

    return load_model("tiny-random")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(proc: subprocess.Popen, url: str, log: Path, what: str, timeout: float) -> None:
    """Poll `url` until it answers 200; one clear failure (with the log's tail) if `proc` exits first or
    `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{what} did not answer within {timeout:.0f} s")
        time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def app_url():
    """`python app.py --model tiny-random` in a subprocess, on a free port."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(ARTIFACTS / "app-server.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--model", "tiny-random", "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/"
    wait_until_serving(proc, url, ARTIFACTS / "app-server.log", "app.py", 180)
    yield url
    stop(proc)
    log.close()


WEATHER = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}


@contextlib.contextmanager
def serving(args: list[str], log_name: str, ready_path: str = "/health", timeout: float = 180):
    """A server started as `python ARGS --port P` in a subprocess; yields its base URL once `ready_path` answers."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(ARTIFACTS / log_name, "w")
    proc = subprocess.Popen([sys.executable, *args, "--port", str(port)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(proc, url + ready_path, ARTIFACTS / log_name, str(args), timeout)
        yield url
    finally:
        stop(proc)
        log.close()


def run_cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def open_page(browser, url: str, tab: str | None = None, ready: str | None = None):
    """A page of the app with its chat box drawn; with `tab`, that tab opened and `ready` drawn. Close it after."""
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(30_000)
    pg.goto(url)
    pg.wait_for_selector("#chat-input textarea")
    if tab is not None:
        pg.get_by_role("tab", name=tab).click()
        pg.wait_for_selector(ready)
    return pg


SIZES = {"desktop": {"width": 1440, "height": 900}, "phone": {"width": 390, "height": 844}}  # the pages' two sizes


@pytest.fixture(params=list(SIZES))
def size(request):
    """Each page size in turn (the browser tests that check an item at both)."""
    return request.param


def new_visitor(browser, url: str, size: str):
    """A page of the app in a fresh browser context (its own storage: a new visitor) at SIZES[size], its chat
    box drawn. Close its context after."""
    pg = browser.new_context(viewport=SIZES[size]).new_page()
    pg.set_default_timeout(30_000)
    pg.goto(url)
    pg.wait_for_selector("#chat-input textarea")
    return pg


# Gradio draws a tab's components only when the tab first opens, and a frame or more later sets each one's starting
# value again (its core's render_previously_invisible_children): a value typed in between is lost, and on a loaded
# machine that is hundreds of ms. MARK_UNTIL_SETTLED types a mark into the box SELECTOR the first frame it exists
# (before Gradio's second pass, which comes at least a frame after the drawing) and records when the starting value
# is back over it; after a while without that (the tab was drawn already) it takes the mark out itself.
MARK_UNTIL_SETTLED = """(selector) => {
  window.labSettled = false;
  const t0 = performance.now();
  let box = null, start = null;
  const put = (value) => { box.value = value; box.dispatchEvent(new Event('input', {bubbles: true})); };
  const step = () => {
    const found = document.querySelector(selector);
    if (found && box === null) { box = found; start = box.value; put(start + '~'); }
    if (box !== null && box.value === start) { window.labSettled = true; return; }
    if (performance.now() - t0 > 8000) { if (box !== null) put(start); window.labSettled = true; return; }
    requestAnimationFrame(step);
  };
  requestAnimationFrame(step);
}"""


def open_tab(page, tab: str, box: str) -> None:
    """Open `tab` and return once Gradio has drawn it and put its starting values back (MARK_UNTIL_SETTLED), so that
    what the test types next stays; `box` is a text box of the tab (a textarea or input selector)."""
    page.evaluate(MARK_UNTIL_SETTLED, box)
    page.get_by_role("tab", name=tab).click()
    page.wait_for_function("() => window.labSettled === true")


def set_number(page, elem_id: str, value: int) -> None:
    """Type a number into a Gradio number box and commit it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def screenshot(page, name: str) -> None:
    """The whole page into tests/artifacts/NAME."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium through Playwright; never a downloaded browser build."""
    path = os.environ.get("LAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        _require("LAB_REQUIRE_BROWSER", "Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()
