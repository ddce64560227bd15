"""Which models a Compare across models keeps loaded together, and in what order it loads them: a pure plan from
what each model would take, what is in memory now and what is free (lab.models.manager measures those).

    plan = place([Need("tiny-random · fp32", 330_000), Need("tiny-random · bf16", 160_000)],
                 held={"tiny-random · fp32": 280_000}, free=8 * 2**30, keep="tiny-random · fp32")
    plan.together, [(s.key, s.load, s.free_after) for s in plan.steps], plan.note

The rules, in order:
- a model in memory that no variant asks for (and is not the page's own, `keep`) is freed first;
- if every model not yet in memory fits in what is then free (HEADROOM of it: the rest is for replies), all are
  loaded and stay loaded together: the models in memory run first, then the others in the variants' order;
- otherwise they run one after another: the models in memory first, then each of the others loaded, run and
  freed before the next loads; Compare's own models already in memory are freed after their turn too. The page's
  own model stays unless the largest of the others would not fit beside it even with everything else freed: then
  it is freed (after its own turn, if a variant asks for it) and loaded again after the last (`reload_keep`).
A model whose size cannot be told before loading (a GGUF, a Hub model not in the cache) never counts as fitting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

HEADROOM = 0.9  # the share of free memory models may take; the rest is for replies and the allocator


@dataclass(frozen=True)
class Need:
    key: str  # "name · quant", as the page shows it
    bytes: int | None  # memory it takes loaded; None: cannot tell before loading


@dataclass(frozen=True)
class Step:
    key: str
    load: bool  # loaded before its panes run (else it is in memory already)
    free_after: bool  # freed once its panes are done


@dataclass
class Placement:
    steps: list[Step]  # in running order, one per distinct model
    free_first: list[str] = field(default_factory=list)  # in memory, asked for by none: freed before any load
    together: bool = True  # every model the variants ask for is in memory at once
    reload_keep: bool = False  # the page's own model is freed for the loads and loaded again after
    note: str = ""


def place(needs: Sequence[Need], held: dict[str, int], free: int | None, keep: str | None = None) -> Placement:
    """The plan for running the variants' models (module docstring); `needs` in the variants' order, one per
    distinct model; `held`: key -> bytes of every model in memory; `free`: bytes free now (None: unknown)."""
    needs = list({n.key: n for n in needs}.values())
    wanted = {n.key for n in needs}
    free_first = [k for k in held if k not in wanted and k != keep]
    room = None if free is None else HEADROOM * (free + sum(held[k] for k in free_first))
    in_memory = [n for n in needs if n.key in held]
    to_load = [n for n in needs if n.key not in held]
    new_bytes = [n.bytes for n in to_load]
    fits = room is not None and None not in new_bytes and sum(new_bytes) <= room
    if fits:
        steps = [Step(n.key, False, False) for n in in_memory] + [Step(n.key, True, False) for n in to_load]
        return Placement(steps, free_first, True, False, _note_together(needs, held, free))
    largest = max((b for b in new_bytes if b is not None), default=None)
    beside_keep = None if free is None else HEADROOM * (free + sum(b for k, b in held.items() if k != keep))
    reload_keep = (keep in held and largest is not None and beside_keep is not None and largest > beside_keep)
    steps = [Step(n.key, False, n.key != keep or reload_keep) for n in in_memory]
    steps += [Step(n.key, True, True) for n in to_load]
    return Placement(steps, free_first, len(steps) <= 1, reload_keep,
                     _note_apart(needs, held, free, reload_keep, keep))


def size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _listed(needs: Sequence[Need], held: dict[str, int]) -> str:
    return ", ".join(f"{n.key} ({size(held.get(n.key, n.bytes))}{', loaded' if n.key in held else ''})"
                     for n in needs)


def _note_together(needs, held, free) -> str:
    if all(n.key in held for n in needs):
        return f"Every model is loaded already: {_listed(needs, held)}."
    return (f"These fit together in {size(free)} free, so they stay loaded for the next run: "
            f"{_listed(needs, held)}.")


def _note_apart(needs, held, free, reload_keep, keep) -> str:
    why = ("the size of one cannot be told before loading" if any(n.bytes is None and n.key not in held
                                                                   for n in needs)
           else f"{size(free)} is free" if free is not None else "free memory cannot be read here")
    text = (f"These do not fit together ({why}): {_listed(needs, held)}; they run one after another, each freed "
            "before the next loads")
    if reload_keep:
        text += f", and the page's model ({keep}) is freed for them and loaded again after"
    return text + "."
