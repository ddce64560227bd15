"""The Hugging Face Space: stage a ready Space folder from this checkout, push it, the limits a Space puts
on evaluations, and ZeroGPU's decorator.

    python -m lab.space stage /tmp/space                                # assemble the folder
    python -m lab.space stage /tmp/space --push alice/qwen-lab          # ... then create or update the Space
    python -m lab.space stage /tmp/space --push alice/qwen-lab --private

On ZeroGPU hardware, GPU work must run inside a function decorated with `spaces.GPU` (Hugging Face's
`spaces` package, preinstalled on Spaces); `gpu()` applies it there and is a no-op everywhere else.

A stage holds what a Gradio Space runs: `app.py`, the `lab/` package (no caches, no tests), `prompts/`,
`evals/`, the Space card `spaces/README.md` as `README.md`, `spaces/requirements.txt`, and the
screenshots the card shows. `python app.py` in it starts the page as the Space will (set SPACE_ID to
take the Space's code path). The token for `--push` comes from HF_TOKEN or `hf auth login`'s store and
is never printed. Exit status 0 on success, 2 on a user error (one sentence). spaces/GUIDE.md says more.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lab import config
from lab.cli import user_errors
from lab.errors import LabError

ROOT = Path(__file__).resolve().parent.parent  # the checkout: app.py, lab/, prompts/, evals/, spaces/
MARKER = ".qwen-lab-stage"  # written into every stage, so staging again may replace it
CARD_KEYS = ("title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "app_file", "license", "models",
             "suggested_hardware", "short_description")
TREES = ("lab", "prompts", "evals")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "tests", "test_*.py", "*.egg-info", ".*")
PUSH_DELETES = [f"{tree}/*" for tree in TREES]  # a module removed here is removed from the Space too



def on_space() -> bool:
    """True inside a Hugging Face Space (the platform sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def gpu(duration: int = 60):
    """`spaces.GPU(duration=...)` on a Space that has the `spaces` package; the function unchanged elsewhere."""

    def wrap(fn):
        if not on_space():
            return fn
        try:
            import spaces
        except ImportError:  # a Space on ordinary GPU or CPU hardware need not install it
            return fn
        # Run from a checkout without Hugging Face's package, `import spaces` finds the checkout's spaces/
        # folder (a namespace package with no GPU); the staged Space has no such folder.
        if not hasattr(spaces, "GPU"):
            return fn
        return spaces.GPU(duration=duration)(fn)

    return wrap


def eval_notice() -> str:
    """What a Space's Evaluate tab says about its caps (one GPU shared among the Space's visitors)."""
    from lab.eval.kinds import KINDS

    caps = " or ".join(f"{k.SPACE_CAP} {k.UNIT} ({name} benchmarks)" for name, k in KINDS.items())
    return (f"On this Space an evaluation runs at most {caps}, and a larger limit is lowered to that; run whole "
            "benchmarks on your own GPU with `python -m lab.eval`.")


def cap_limit(kind, title: str, planned: int, limit: int | None) -> tuple[int | None, str | None]:
    """The limit a run on a Space gets, and the notice to show when it had to be lowered.

    kind: the benchmark's kind (lab.eval.kinds); planned: how many items the request, as asked, would run."""
    cap = kind.SPACE_CAP
    if planned <= cap:
        return limit, None
    return cap, (f"This Space runs at most {cap} {title} {kind.UNIT} at a time, so this run takes {cap} of the "
                 f"{planned:,} asked for; run more on your own GPU with python -m lab.eval.")


def front_matter(text: str) -> dict:
    """The YAML block between the first two `---` lines of a Space card."""
    m = re.match(r"---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", text, re.S)
    if not m:
        raise LabError("The Space card has no YAML front matter; it must start with a block between two --- lines.")
    data = config.parse_yaml(m.group(1), "The Space card's front matter")
    if not isinstance(data, dict):
        raise LabError("The Space card's front matter is not a YAML mapping of keys to values.")
    return data


def pinned(requirements: str, package: str) -> str | None:
    """The version `package==X` pins in a requirements text (names compared as pip does)."""
    want = re.sub(r"[-_.]+", "-", package).lower()
    for line in requirements.splitlines():
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if m and re.sub(r"[-_.]+", "-", m.group(1)).lower() == want:
            return m.group(2)
    return None


def card_images(card: str) -> list[str]:
    """Relative image paths a card shows (Markdown `![..](path)` and HTML `<img src="path">`)."""
    found = re.findall(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?", card) + re.findall(r"<img[^>]*\ssrc=[\"']([^\"']+)", card)
    return [p for p in dict.fromkeys(found)
            if "://" not in p and not p.startswith(("/", "#", "data:")) and ".." not in Path(p).parts]


def check_card(card: str, requirements: str) -> dict:
    """The card's front matter, after checking what the Hub and this project need of it."""
    meta = front_matter(card)
    missing = [k for k in CARD_KEYS if k not in meta]
    if missing:
        raise LabError(f"The Space card lacks {', '.join(missing)} in its front matter.")
    if meta["sdk"] != "gradio":
        raise LabError(f"The Space card says sdk: {meta['sdk']}, but Qwen Lab is a Gradio app (sdk: gradio).")
    pin = pinned(requirements, "gradio")
    if str(meta["sdk_version"]) != pin:
        raise LabError(f"The Space card's sdk_version {meta['sdk_version']} differs from the gradio=={pin} "
                       "pinned in spaces/requirements.txt; make them the same version.")
    return meta


@dataclass
class Stage:
    path: Path
    files: list[str] = field(default_factory=list)  # every file written, relative to path
    card: dict = field(default_factory=dict)


def _is_stage(path: Path) -> bool:
    return (path / MARKER).is_file()


def _check_dest(dest: Path, root: Path, force: bool) -> None:
    sources = [root / "app.py", root / "spaces", *(root / t for t in TREES)]
    if dest == root or root.is_relative_to(dest) or any(dest.is_relative_to(s) for s in sources):
        raise LabError(f"{dest} is or holds the checkout's own files; stage into a folder outside them, "
                       "such as /tmp/space.")
    if dest.exists() and not dest.is_dir():
        raise LabError(f"{dest} is a file; stage into a folder.")
    if dest.is_dir() and any(dest.iterdir()) and not _is_stage(dest) and not force:
        raise LabError(f"{dest} is not empty and holds no earlier stage; pick an empty folder, or add --force "
                       "to write the Space's files into it (other files there stay, and are not pushed).")


def _clear(dest: Path, names: set[str]) -> None:
    """Remove the top-level entries of `dest` named in `names` (an earlier stage's, or ours)."""
    for name in names:
        target = dest / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def stage(dest: str | Path, force: bool = False, root: Path = ROOT) -> Stage:
    """Assemble a ready Space folder in `dest` from the checkout at `root`."""
    dest = Path(dest).expanduser().resolve()
    root = root.resolve()
    card_path, req_path = root / "spaces" / "README.md", root / "spaces" / "requirements.txt"
    for path in (root / "app.py", card_path, req_path, *(root / t for t in TREES)):
        if not path.exists():
            raise LabError(f"{path} is missing; stage from a checkout of Qwen Lab.")
    card, requirements = card_path.read_text(encoding="utf-8"), req_path.read_text(encoding="utf-8")
    meta = check_card(card, requirements)
    images = card_images(card)
    absent = [p for p in images if not (root / "spaces" / p).is_file()]
    if absent:
        raise LabError(f"The Space card shows {', '.join(absent)}, which spaces/ does not hold.")
    _check_dest(dest, root, force)

    # Replace what an earlier stage wrote, and whatever stands where this one writes; nothing else.
    tops = {"app.py", "README.md", "requirements.txt", MARKER, *TREES, *(Path(p).parts[0] for p in images)}
    if _is_stage(dest):
        try:
            earlier = json.loads((dest / MARKER).read_text(encoding="utf-8")).get("files", [])
        except (OSError, ValueError, AttributeError):
            earlier = []
        tops |= {Path(p).parts[0] for p in earlier
                 if isinstance(p, str) and Path(p).parts and not Path(p).is_absolute() and ".." not in Path(p).parts}
    dest.mkdir(parents=True, exist_ok=True)
    _clear(dest, tops)

    shutil.copy2(root / "app.py", dest / "app.py")
    for tree in TREES:
        shutil.copytree(root / tree, dest / tree, ignore=SKIP)
    (dest / "README.md").write_text(card, encoding="utf-8")
    (dest / "requirements.txt").write_text(requirements, encoding="utf-8")
    for image in images:
        (dest / image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / "spaces" / image, dest / image)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")
                   if p.is_file() and p.name != MARKER and p.relative_to(dest).parts[0] in tops)
    (dest / MARKER).write_text(json.dumps({"format": "qwen-lab.stage/1", "source": str(root), "files": files},
                                          indent=1) + "\n", encoding="utf-8")
    return Stage(dest, files, meta)


def check_repo_id(repo_id: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", repo_id or ""):
        raise LabError(f"--push takes OWNER/NAME, such as alice/qwen-lab, not {repo_id!r}.")


def find_token() -> str:
    """The token `--push` will use: HF_TOKEN, else the store `hf auth login` writes. Checked for, never shown."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise LabError("No Hugging Face token was found; set HF_TOKEN to a token with write access, "
                       "or run `hf auth login`, then push again.")
    return token


def push(staged: Stage, repo_id: str, private: bool = False) -> str:
    """Create the Space `repo_id` if it is missing, upload the stage's files to it, and return its URL.

    Exactly the files the stage wrote go up (not a `runs/` or `__pycache__/` that running it left), and
    files under lab/, prompts/ and evals/ that the stage no longer has are deleted from the Space."""
    check_repo_id(repo_id)
    from huggingface_hub import HfApi

    token = find_token()
    api = HfApi()  # token=None: huggingface_hub finds the same token itself
    try:
        url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", exist_ok=True,
                              private=private or None)
        api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=staged.path,
                          commit_message="Update from Qwen Lab (python -m lab.space)",
                          allow_patterns=staged.files, delete_patterns=PUSH_DELETES)
    except Exception as e:  # the Hub's HTTP errors, no network, offline mode: one sentence, never the token
        raise LabError(push_error(e, repo_id, token)) from None
    return str(url)


def push_error(e: Exception, repo_id: str, token: str) -> str:
    """One sentence for a failed push; the token never appears in it."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return f"HF_HUB_OFFLINE is set, so nothing can be pushed to {repo_id}; unset it and push again."
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status in (401, 403):
        return (f"The Hugging Face Hub refused the token for {repo_id} (HTTP {status}); use a token with write "
                "access to that owner, then push again.")
    first = (str(e).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".") or type(e).__name__
    reason = (f"HTTP {status}: {first}" if status else first).replace(token, "***")[:200]
    return f"Pushing to the Space {repo_id} failed ({reason}); check the network and try again."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab.space", description="Stage Qwen Lab as a Hugging Face "
                                "Space folder, and push it.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stage", help="assemble a ready Space folder (and push it with --push)")
    s.add_argument("dir", help="the folder to stage into: empty, new, or an earlier stage")
    s.add_argument("--force", action="store_true", help="stage into a non-empty folder that is no earlier stage")
    s.add_argument("--push", metavar="OWNER/NAME", help="then create the Space if missing and upload the folder")
    s.add_argument("--private", action="store_true", help="with --push: create the Space private")
    return p


@user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.private and not args.push:
        raise LabError("--private only means something with --push OWNER/NAME.")
    if args.push:  # before anything is written or sent
        check_repo_id(args.push)
        find_token()
    result = stage(args.dir, force=args.force)
    print(f"Staged {len(result.files)} files in {result.path} (gradio {result.card['sdk_version']}, "
          f"suggested hardware {result.card['suggested_hardware']}).")
    if args.push:
        print(f"Pushing to the Space {args.push}…", flush=True)
        print(push(result, args.push, private=args.private))
    else:
        print(f"Try it as the Space runs it: cd {result.path} && SPACE_ID=local/qwen-lab python app.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
