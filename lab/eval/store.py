"""Evaluation runs and their samples in the run history (lab.db's `runs` and `samples`; lab/db.py).

    store = RunStore.open()                 # creates (or migrates) the file on first use
    run_id = store.create_run(meta)         # meta: benchmark, model, quant, parameters, versions, ...
    store.add_samples(run_id, records)      # one transaction per batch, as the batch completes
    store.save(run_id, records)             # the same, but a sample that cannot be written does not stop the rest
    store.done_keys(run_id)                 # what a resumed run skips
    store.finish(run_id, "finished", summary)
    store.rename(run_id, "bf16, 5-shot")    # a name the page shows beside the id ("" clears it)
    store.delete(run_id)                    # the run and its samples (not while it runs, nor inside a report)

Each batch of samples is committed in its own transaction, so a run killed with SIGKILL keeps every
batch written before the kill and `--resume` redoes only the rest. WAL mode lets the page read the
history while a run writes to it.

Any Python str is stored and read back equal, whatever a model or a samples file put in it (lone
surrogates, NUL, megabytes): every value is bound through lab.db's `put` and read through its `get`.
JSON fields are dumped with ensure_ascii=False, so their strings go through that same rule rather than
through JSON's \\u escapes (which would join two lone surrogates into one character).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

from lab.db import Store, get, put
from lab.errors import LabError


@dataclass
class Sample:
    key: str
    position: int
    subject: str | None
    prompt: str
    output: str | None
    extracted: str | None
    gold: str | None
    correct: bool
    detail: dict = field(default_factory=dict)
    duration_s: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Run:
    id: str
    benchmark: str
    subset: str | None
    mode: str
    shots: int | None
    model: str
    quant: str | None
    params: dict
    data_source: str | None
    versions: dict
    seed: int | None
    n_total: int
    status: str  # as stored; `state` tells a killed run from a live one
    started_at: float
    ended_at: float | None
    summary: dict | None
    owner: str | None = None
    name: str | None = None  # given on the page (or by Compare: its variant's name); None: known by its id

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def state(self) -> str:
        """The status, except that a "running" run whose process is gone on this machine is "interrupted"
        (killed, or the machine went down): nothing finishes it but --resume."""
        return _state(self.status, self.owner)

    @property
    def label(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started_at))
        sub = f"/{self.subset}" if self.subset else ""
        shots = "" if self.shots is None else f" {self.shots}-shot"
        named = f"“{self.name}” " if self.name else ""
        return (f"{named}{self.id} · {self.benchmark}{sub} {self.mode}{shots} · {self.model} {self.quant or ''} · "
                f"{when}")


class RunStore(Store):
    def create_run(self, *, benchmark: str, mode: str, model: str, params: dict, n_total: int,
                   subset: str | None = None, shots: int | None = None, quant: str | None = None,
                   data_source: str | None = None, versions: dict | None = None, seed: int | None = None) -> str:
        run_id = f"{benchmark}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        with self.conn() as c:
            c.execute(
                "INSERT INTO runs (id, benchmark, subset, mode, shots, model, quant, params, data_source, versions,"
                " seed, n_total, status, owner, started_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,'running',?,?)",
                tuple(map(put, (run_id, benchmark, subset, mode, shots, model, quant, _json(params), data_source,
                                _json(versions or {}), seed, n_total, _owner(), time.time()))),
            )
        return run_id

    def add_samples(self, run_id: str, samples: Iterable[Sample]) -> None:
        rows = [tuple(map(put, (run_id, s.key, s.position, s.subject, s.prompt, s.output, s.extracted, s.gold,
                                int(bool(s.correct)), _json(s.detail), s.duration_s))) for s in samples]
        with self.conn() as c:  # one transaction: the whole batch or none of it
            c.executemany("INSERT OR REPLACE INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)

    def save(self, run_id: str, samples: Sequence[Sample]) -> list[Sample]:
        """add_samples, except that one sample that cannot be written (a detail JSON cannot hold, a field of
        the wrong type) does not lose the others: the batch is retried one sample at a time, and such a
        sample is saved as an "error" verdict that says why. Returns what was saved. A store that cannot
        write at all still raises."""
        samples = list(samples)
        try:
            self.add_samples(run_id, samples)
            return samples
        except sqlite3.OperationalError:  # locked, disk full, read-only: no sample would fare better alone
            raise
        except Exception:
            pass
        saved = []
        for s in samples:
            try:
                self.add_samples(run_id, [s])
            except sqlite3.OperationalError:
                raise
            except Exception as e:
                s = unsaveable(s, e)
                self.add_samples(run_id, [s])
            saved.append(s)
        return saved

    def set_status(self, run_id: str, status: str) -> None:
        with self.conn() as c:
            c.execute("UPDATE runs SET status=?, owner=?, ended_at=NULL WHERE id=?",
                      (status, put(_owner()), put(run_id)))

    def rename(self, run_id: str, name: str | None) -> None:
        """Give a run a name shown beside its id; empty clears it."""
        name = " ".join((name or "").split())
        if len(name) > 120:
            raise LabError(f"A run's name takes at most 120 characters, not {len(name)}.")
        self.get(run_id)  # an unknown id is its sentence
        with self.conn() as c:
            c.execute("UPDATE runs SET name=? WHERE id=?", (put(name or None), put(run_id)))

    def delete(self, run_id: str) -> None:
        """Remove a run and its samples; refused while it runs, and for a run a quantization report is made of."""
        run = self.get(run_id)
        if run.state == "running":
            raise LabError(f"Run {run_id} is still running; cancel it first, then delete it.")
        with self.conn() as c:
            row = c.execute("SELECT report_id FROM quant_runs WHERE run_id=?", (put(run_id),)).fetchone()
            if row is not None:
                raise LabError(f"Run {run_id} is part of quantization report {get(row[0])}; it stays while the "
                               "report does.")
            c.execute("DELETE FROM runs WHERE id=?", (put(run_id),))  # samples go with it (ON DELETE CASCADE)

    def update_params(self, run_id: str, **values) -> None:
        """Set keys of a run's params (what it learns as it goes: which processes scored how much of it)."""
        with self.conn() as c:  # one writer of params at a time: the run's process, or rank 0 of its processes
            row = c.execute("SELECT params FROM runs WHERE id=?", (put(run_id),)).fetchone()
            params = {**json.loads(get(row[0])), **values}
            c.execute("UPDATE runs SET params=? WHERE id=?", (put(_json(params)), put(run_id)))

    def finish(self, run_id: str, status: str, summary: dict | None) -> None:
        with self.conn() as c:
            c.execute("UPDATE runs SET status=?, ended_at=?, summary=? WHERE id=?",
                      (status, time.time(), put(_json(summary)) if summary else None, put(run_id)))

    # ---- reading ------------------------------------------------------------------------
    def get(self, run_id: str) -> Run:
        row = self.conn().execute("SELECT * FROM runs WHERE id=?", (put(run_id),)).fetchone()
        if row is None:
            raise LabError(f"No run '{run_id}' in {self.path}; `python -m lab.eval list` shows the runs.")
        return _run(row)

    def runs(self, benchmark: str | None = None, limit: int = 200) -> list[Run]:
        sql, args = "SELECT * FROM runs", ()
        if benchmark:
            sql, args = sql + " WHERE benchmark=?", (put(benchmark),)
        rows = self.conn().execute(sql + " ORDER BY started_at DESC LIMIT ?", (*args, limit)).fetchall()
        return [_run(r) for r in rows]

    def samples(self, run_id: str) -> list[Sample]:
        rows = self.conn().execute("SELECT * FROM samples WHERE run_id=? ORDER BY position, key", (put(run_id),))
        return [_sample(r) for r in rows]

    def sample(self, run_id: str, key: str) -> Sample | None:
        row = self.conn().execute("SELECT * FROM samples WHERE run_id=? AND key=?",
                                  (put(run_id), put(key))).fetchone()
        return None if row is None else _sample(row)

    def done_keys(self, run_id: str) -> set[str]:
        return {get(r[0]) for r in self.conn().execute("SELECT key FROM samples WHERE run_id=?", (put(run_id),))}


class ReportStore(Store):
    """Quantization reports (lab.db's quant_reports, quant_variants, quant_runs; lab/eval/quant.py): a report's
    request, each variant's load error and measurements, and the ordinary runs it is made of."""

    def create_report(self, request: dict, variants: Sequence[str]) -> str:
        report_id = f"quant-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        with self.conn() as c:
            c.execute("INSERT INTO quant_reports (id, request, status, owner, created_at) VALUES (?,?,'running',?,?)",
                      tuple(map(put, (report_id, _json(request), _owner(), time.time()))))
            c.executemany("INSERT INTO quant_variants (report_id, variant, position, status) VALUES (?,?,?,'pending')",
                          [(put(report_id), put(v), i) for i, v in enumerate(variants)])
        return report_id

    def report(self, report_id: str) -> dict:
        row = self.conn().execute("SELECT * FROM quant_reports WHERE id=?", (put(report_id),)).fetchone()
        if row is None:
            raise LabError(f"No quantization report '{report_id}' in {self.path}; "
                           "`python -m lab.eval quant --list` shows the reports.")
        r = {k: get(row[k]) for k in row.keys()}
        r["request"] = json.loads(r["request"])
        r["timing"] = json.loads(r["timing"]) if r["timing"] else None
        r["state"] = _state(r["status"], r["owner"])
        return r

    def reports(self, limit: int = 200) -> list[dict]:
        rows = self.conn().execute("SELECT id FROM quant_reports ORDER BY created_at DESC LIMIT ?", (limit,))
        return [self.report(get(r[0])) for r in rows.fetchall()]

    def variants(self, report_id: str) -> list[dict]:
        rows = self.conn().execute("SELECT * FROM quant_variants WHERE report_id=? ORDER BY position",
                                   (put(report_id),)).fetchall()
        out = []
        for row in rows:
            v = {k: get(row[k]) for k in row.keys()}
            v["model"] = json.loads(v["model"]) if v["model"] else None
            v["measured"] = json.loads(v["measured"]) if v["measured"] else {}
            out.append(v)
        return out

    def set_variant(self, report_id: str, variant: str, *, status: str | None = None, error: str | None = None,
                    model: dict | None = None, measured: dict | None = None) -> None:
        """Update one variant's row; fields left None keep their value, except that a status clears the error
        unless one is given."""
        sets, args = [], []
        if status is not None:
            sets += ["status=?", "error=?"]
            args += [status, error]
        if model is not None:
            sets.append("model=?")
            args.append(_json(model))
        if measured is not None:
            sets.append("measured=?")
            args.append(_json(measured))
        if sets:
            with self.conn() as c:
                c.execute(f"UPDATE quant_variants SET {', '.join(sets)} WHERE report_id=? AND variant=?",
                          tuple(map(put, (*args, report_id, variant))))

    def link_run(self, report_id: str, variant: str, benchmark: str, run_id: str) -> None:
        with self.conn() as c:
            c.execute("INSERT OR REPLACE INTO quant_runs VALUES (?,?,?,?)",
                      tuple(map(put, (report_id, variant, benchmark, run_id))))

    def report_runs(self, report_id: str) -> dict[str, dict[str, str]]:
        """variant -> benchmark -> run id."""
        out: dict[str, dict[str, str]] = {}
        for row in self.conn().execute("SELECT variant, benchmark, run_id FROM quant_runs WHERE report_id=?",
                                       (put(report_id),)):
            out.setdefault(get(row[0]), {})[get(row[1])] = get(row[2])
        return out

    def set_report_status(self, report_id: str, status: str, timing: dict | None = None) -> None:
        ended = None if status == "running" else time.time()
        with self.conn() as c:
            c.execute("UPDATE quant_reports SET status=?, owner=?, ended_at=?, timing=COALESCE(?, timing) WHERE id=?",
                      tuple(map(put, (status, _owner(), ended, _json(timing) if timing else None, report_id))))


def unsaveable(s: Sample, e: Exception) -> Sample:
    """What is kept of a sample the store could not write: its key, place and task, and why (its texts may be
    what could not be written, so none is kept)."""
    why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    return Sample(str(s.key), int(s.position), s.subject if isinstance(s.subject, str) else None, "", None, None,
                  None, False, {"status": "error", "result": f"could not be saved ({why})"}, None)


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _state(status: str, owner: str | None) -> str:
    """`status`, except that "running" whose process is gone on this machine is "interrupted" (`Run.state`)."""
    if status != "running" or not owner:
        return status
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return status  # another machine's process: cannot tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return "interrupted"
    except (PermissionError, ValueError):
        pass
    return status


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _sample(row: sqlite3.Row) -> Sample:
    r = {k: get(row[k]) for k in row.keys()}
    return Sample(key=r["key"], position=r["position"], subject=r["subject"], prompt=r["prompt"], output=r["output"],
                  extracted=r["extracted"], gold=r["gold"], correct=bool(r["correct"]),
                  detail=json.loads(r["detail"] or "{}"), duration_s=r["duration_s"])


def _run(row: sqlite3.Row) -> Run:
    r = {k: get(row[k]) for k in row.keys()}
    return Run(id=r["id"], benchmark=r["benchmark"], subset=r["subset"], mode=r["mode"], shots=r["shots"],
               model=r["model"], quant=r["quant"], params=json.loads(r["params"]), data_source=r["data_source"],
               versions=json.loads(r["versions"] or "{}"), seed=r["seed"], n_total=r["n_total"],
               status=r["status"], started_at=r["started_at"], ended_at=r["ended_at"],
               summary=json.loads(r["summary"]) if r["summary"] else None, owner=r["owner"], name=r.get("name"))
