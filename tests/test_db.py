"""The run history's schema versions: a new file gets the current one, a file from before versioning (and from
before the owner column) is migrated forward with its runs, samples and votes intact, a newer file is refused."""

from __future__ import annotations

import sqlite3

import pytest

from lab.compare.votes import VoteStore
from lab.db import VERSION, Database
from lab.errors import LabError
from lab.eval.store import RunStore

# lab.db as the first releases wrote it: no user_version, `runs` without its owner column, no votes table.
OLD = """
CREATE TABLE runs (id TEXT PRIMARY KEY, benchmark TEXT NOT NULL, subset TEXT, mode TEXT NOT NULL, shots INTEGER,
    model TEXT NOT NULL, quant TEXT, params TEXT NOT NULL, data_source TEXT, versions TEXT, seed INTEGER,
    n_total INTEGER, status TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL, summary TEXT);
CREATE TABLE samples (run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, key TEXT NOT NULL,
    position INTEGER NOT NULL, subject TEXT, prompt TEXT NOT NULL, output TEXT, extracted TEXT, gold TEXT,
    correct INTEGER NOT NULL, detail TEXT, duration_s REAL, PRIMARY KEY (run_id, key));
INSERT INTO runs VALUES ('mmlu-old', 'mmlu', NULL, 'logprob', 5, 'tiny-random', 'fp32', '{"request": {}}', NULL,
    '{}', 1234, 1, 'finished', 1.0, 2.0, '{"overall": {"accuracy": 1.0}}');
INSERT INTO samples VALUES ('mmlu-old', 'anatomy/0', 0, 'anatomy', 'p', 'A:-1.0', 'A', 'A', 1, '{}', 0.1);
"""


def version(path) -> int:
    with sqlite3.connect(path) as c:
        return c.execute("PRAGMA user_version").fetchone()[0]


def test_a_new_file_has_every_table_at_the_current_version(tmp_path):
    Database.open(tmp_path)
    assert version(tmp_path / "lab.db") == VERSION
    with sqlite3.connect(tmp_path / "lab.db") as c:
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        owner = "owner" in {r[1] for r in c.execute("PRAGMA table_info(runs)")}
    assert {"runs", "samples", "votes"} <= tables and owner


def test_a_file_from_before_versioning_is_migrated_and_keeps_its_runs(tmp_path):
    with sqlite3.connect(tmp_path / "lab.db") as c:
        c.executescript(OLD)
    store = RunStore.open(tmp_path)
    assert version(tmp_path / "lab.db") == VERSION
    run = store.get("mmlu-old")
    assert run.status == "finished" and run.owner is None and run.summary == {"overall": {"accuracy": 1.0}}
    assert [s.key for s in store.samples("mmlu-old")] == ["anatomy/0"]
    new = store.create_run(benchmark="mmlu", mode="logprob", model="m", params={}, n_total=1)
    assert store.get(new).owner  # the migrated column is written
    assert VoteStore.open(tmp_path).tally() == []  # the votes table came with the migration
    RunStore.open(tmp_path)  # opening again changes nothing
    assert version(tmp_path / "lab.db") == VERSION and store.get("mmlu-old").status == "finished"


def test_a_file_from_a_newer_version_is_refused_in_one_sentence(tmp_path):
    Database.open(tmp_path)
    with sqlite3.connect(tmp_path / "lab.db") as c:
        c.execute(f"PRAGMA user_version={VERSION + 1}")
    with pytest.raises(LabError, match="written by a newer Qwen Lab") as e:
        RunStore.open(tmp_path)
    assert "\n" not in str(e.value)


def test_a_damaged_file_is_one_sentence(tmp_path):
    (tmp_path / "lab.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(LabError, match="cannot be opened"):
        RunStore.open(tmp_path)


def test_a_version_3_file_with_a_nul_in_its_text_is_brought_forward_and_its_rows_found(tmp_path):
    # Version 3 bound a str with a NUL as TEXT; version 4 binds it as a BLOB, so the migration moves it.
    with sqlite3.connect(tmp_path / "lab.db") as c:
        c.executescript(OLD)
        c.execute("ALTER TABLE runs ADD COLUMN owner TEXT")
        c.execute("INSERT INTO samples VALUES ('mmlu-old', ?, 1, 'anatomy', ?, ?, 'A', 'A', 1, ?, 0.1)",
                  ("anatomy/1\x00", "p\x00q", "A\x00", '{"stdout": "\\u0000"}'))
        c.execute("PRAGMA user_version=3")
        assert c.execute("SELECT typeof(prompt) FROM samples WHERE position=1").fetchone() == ("text",)
    store = RunStore.open(tmp_path)
    assert version(tmp_path / "lab.db") == VERSION
    with sqlite3.connect(tmp_path / "lab.db") as c:
        kinds = c.execute("SELECT typeof(key), typeof(prompt), typeof(output), typeof(gold) FROM samples "
                          "ORDER BY position").fetchall()
    assert kinds == [("text",) * 4, ("blob", "blob", "blob", "text")]
    s = store.sample("mmlu-old", "anatomy/1\x00")  # found by the key as this version binds it
    assert (s.prompt, s.output, s.detail) == ("p\x00q", "A\x00", {"stdout": "\x00"})
    store.add_samples("mmlu-old", [s])  # a resumed batch writes the row again: replaced, not doubled
    assert [x.key for x in store.samples("mmlu-old")] == ["anatomy/0", "anatomy/1\x00"]
    assert store.get("mmlu-old").summary == {"overall": {"accuracy": 1.0}}


def test_version_5_adds_the_quantization_report_tables_to_a_version_4_file(tmp_path):
    from lab.eval.store import ReportStore

    with sqlite3.connect(tmp_path / "lab.db") as c:  # a version 4 file: runs, samples and votes, no reports
        c.executescript(OLD)
        c.execute("ALTER TABLE runs ADD COLUMN owner TEXT")
        c.execute("PRAGMA user_version=4")
    reports = ReportStore.open(tmp_path)
    assert version(tmp_path / "lab.db") == VERSION >= 5
    rid = reports.create_report({"model": "m", "variants": ["fp32", "bf16"]}, ["fp32", "bf16"])
    reports.link_run(rid, "fp32", "mmlu:mini", "mmlu-old")  # a report links ordinary runs
    reports.set_variant(rid, "bf16", status="failed", error="bf16 could not be loaded.")
    reports.set_variant(rid, "fp32", status="done", measured={"load_s": 1.0})
    assert reports.report_runs(rid) == {"fp32": {"mmlu:mini": "mmlu-old"}}
    rows = {v["variant"]: v for v in reports.variants(rid)}
    assert [v["position"] for v in reports.variants(rid)] == [0, 1]
    assert rows["bf16"]["error"] == "bf16 could not be loaded." and rows["fp32"]["measured"] == {"load_s": 1.0}
    assert reports.report(rid)["state"] == "running"  # this process is alive
    assert RunStore.open(tmp_path).get("mmlu-old").status == "finished"  # the old runs are untouched
