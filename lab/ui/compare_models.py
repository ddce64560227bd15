"""Compare across models: variants that name a model or a quantization run on it, the page's model answering the
others. Before anything loads, the manager says what each model would take and what is free, and
lab.compare.placement decides which stay loaded together and which run one after another, freed between; each
model's variants are one batched generation, the models taking turns. A comparison where no variant names a
model never comes here: it stays the one batched generation of `lab.compare.run_variants`.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

from lab.compare import Pane, Variant, check_fits, run_variants
from lab.compare.placement import Placement, place
from lab.errors import LabError
from lab.models.manager import ModelManager, Wanted


@dataclass
class Plan:
    wanted: list[Wanted]  # per variant
    placement: Placement

    def groups(self) -> list[tuple[Wanted, list[int]]]:
        """Each step's model and the variants (by index) it answers, in running order."""
        by_key = {w.key: w for w in self.wanted}
        return [(by_key[s.key], [i for i, w in enumerate(self.wanted) if w.key == s.key])
                for s in self.placement.steps]


def spans_models(variants: Sequence[Variant]) -> bool:
    return any(v.names_model for v in variants)


def plan_for(manager: ModelManager, variants: Sequence[Variant]) -> Plan:
    """Every variant's model resolved and checked (one sentence for a bad name or quantization), and the plan."""
    if not manager.loaded and not all(v.names_model for v in variants):
        raise LabError("No model is loaded for the variants that name none; load one in the Model panel, "
                       "or give every variant a model.")
    wanted = []
    for v in variants:
        if not v.names_model:
            wanted.append(manager.want(None, None))
            continue
        try:
            wanted.append(manager.want(v.model, v.quant))
        except LabError as e:
            raise LabError(f"Variant '{v.name}': {str(e)[0].lower()}{str(e)[1:]}") from None
    needs = [_need(w) for w in wanted]
    return Plan(wanted, place(needs, manager.held(), manager.free_bytes(), keep=manager.main_key()))


def _need(w: Wanted):
    from lab.compare.placement import Need

    return Need(w.key, w.bytes)


def run_planned(manager: ModelManager, user_input: str, variants: Sequence[Variant], plan: Plan,
                cancel: threading.Event | None = None) -> Iterator[tuple[list[Pane], str, list]]:
    """Run each model's variants in the plan's order; yields (every pane so far, what is happening, each variant's
    ModelInfo or None until its model is loaded). A model that cannot load, or whose context is too small for a
    variant's prompt and max new tokens, is a sentence in its panes; the others still run."""
    panes = [Pane() for _ in variants]
    infos: list = [None] * len(variants)
    placement = plan.placement
    for key in placement.free_first:
        manager.release(key)
    keep_request = manager.request if placement.reload_keep else None
    main_wanted = manager.main_key() in {w.key for w in plan.wanted}
    if keep_request is not None and not main_wanted:
        manager.unload()
    groups = plan.groups()
    try:
        for n, ((wanted, rows), step) in enumerate(zip(groups, placement.steps), 1):
            if cancel is not None and cancel.is_set():
                break
            where = f"model {n}/{len(groups)}, {wanted.key}"
            yield panes, f"{'Loading' if step.load else 'Running'} {where}…", infos
            try:
                model = manager.hold(wanted)
            except LabError as e:
                for i in rows:
                    panes[i].text = f"*{wanted.key} could not be loaded: {e}*"
                continue
            try:  # a prompt too long for this model's context: a sentence in its panes, the other models still run
                check_fits(model, user_input, [variants[i] for i in rows])
            except LabError as e:
                for i in rows:
                    panes[i].text = f"*{e}*"
                continue
            for i in rows:
                infos[i] = model.info
            yield panes, f"Generating on {where} ({len(rows)} variant{'s' * (len(rows) > 1)} in one batch)…", infos
            with contextlib.closing(run_variants(model, user_input, [variants[i] for i in rows], cancel)) as stream:
                for part in stream:
                    for i, p in zip(rows, part):
                        panes[i] = p
                    yield panes, f"Generating on {where}…", infos
            if step.free_after:
                if wanted.key == manager.main_key():
                    manager.unload()
                else:
                    manager.release(wanted.key)
    finally:
        if keep_request is not None and not manager.loaded:
            manager.load(keep_request)  # the page's model back, as the Chat tab left it
    yield panes, "", infos
