"""The run history's SQLite file (`runs/lab.db`; --runs-dir or LAB_RUNS_DIR moves it): one connection per
thread, WAL mode, and the schema's versions.

    db = Database.open()          # creates the folder and file, or migrates an older file forward
    with db.conn() as c: ...      # this thread's connection; `with` commits or rolls back

The schema's version is SQLite's `PRAGMA user_version`. Each step of MIGRATIONS brings a file from the
version before it to its own; steps are written so that a file from before versioning (user_version 0,
tables possibly there already) passes through them unharmed. A file newer than this code is refused in
one sentence rather than written into.

Text is stored so that any Python str reads back equal (`put` to bind, `get` to read): a string SQLite can
hold as text (valid UTF-8 without NUL) is TEXT, so the file stays readable by eye and by `sqlite3`; any
other (a lone surrogate such as "\\ud800", which sqlite3 refuses to bind, or a NUL, past which SQLite's
text functions do not see) is a BLOB of its UTF-8 bytes with surrogates passed through ("surrogatepass").
SQLite keeps a BLOB as it is in a TEXT column, so the schema's declared types stay. A string maps to
one stored value, so `WHERE key=?` with a `put` value finds its row.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
from pathlib import Path

from lab import config
from lab.errors import LabError

RUNS = """
CREATE TABLE IF NOT EXISTS runs (
    id          TEXT PRIMARY KEY,
    benchmark   TEXT NOT NULL,
    subset      TEXT,
    mode        TEXT NOT NULL,
    shots       INTEGER,
    model       TEXT NOT NULL,
    quant       TEXT,
    params      TEXT NOT NULL,      -- JSON: everything that shapes the result (limit, seed, sampling, ...)
    data_source TEXT,
    versions    TEXT,               -- JSON: torch, transformers, bitsandbytes, GPU, ...
    seed        INTEGER,
    n_total     INTEGER,            -- samples the finished run will hold
    status      TEXT NOT NULL,      -- running, finished, cancelled, failed
    started_at  REAL NOT NULL,
    ended_at    REAL,
    summary     TEXT                -- JSON, written when the run ends
);
CREATE TABLE IF NOT EXISTS samples (
    run_id     TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key        TEXT NOT NULL,       -- "anatomy/12" (subject/row), "TASK_ID#0" (task, sample number)
    position   INTEGER NOT NULL,    -- order in the run's item list
    subject    TEXT,
    prompt     TEXT NOT NULL,       -- exactly what the model was given
    output     TEXT,                -- raw model output (or the scored letters' log-probabilities)
    extracted  TEXT,                -- the answer read from it: a letter, or the program's completion
    gold       TEXT,
    correct    INTEGER NOT NULL,
    detail     TEXT,                -- JSON: log-probabilities, sandbox result, token counts, ...
    duration_s REAL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX IF NOT EXISTS samples_run_position ON samples(run_id, position);
"""

VOTES = """
CREATE TABLE IF NOT EXISTS votes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at  REAL NOT NULL,
    model       TEXT,
    input       TEXT NOT NULL,
    variants    TEXT NOT NULL,      -- JSON: each variant's definition and key, in pane-definition order
    outputs     TEXT NOT NULL,      -- JSON: each variant's reply, same order
    shown       TEXT,               -- JSON: the variant shown in each blind pane, by pane
    winner      INTEGER,            -- index into variants; NULL is a tie
    winner_key  TEXT                -- the winner's key (NULL for a tie), for reading the table by eye
);
"""


def _columns(c: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in c.execute(f"PRAGMA table_info({table})")}


def _v1_runs(c: sqlite3.Connection) -> None:
    c.executescript(RUNS)


def _v2_owner(c: sqlite3.Connection) -> None:
    # "host:pid" of the process running a run, to tell a killed run from a live one
    if "owner" not in _columns(c, "runs"):
        c.execute("ALTER TABLE runs ADD COLUMN owner TEXT")


def _v3_votes(c: sqlite3.Connection) -> None:
    c.executescript(VOTES)


# The free-text columns of runs and samples (ids are made by the code and never hold such characters).
TEXT_COLUMNS = {"runs": ("benchmark", "subset", "mode", "model", "quant", "params", "data_source", "versions",
                         "status", "summary", "owner"),
                "samples": ("key", "subject", "prompt", "output", "extracted", "gold", "detail")}


def _v4_text_as_put_writes_it(c: sqlite3.Connection) -> None:
    # Older versions bound a string with a NUL as TEXT; this one binds it as a BLOB (`put`). Move such values
    # to BLOBs so that each string has one stored form and `WHERE key=?` and INSERT OR REPLACE on resume
    # still find the old rows. (Older versions could not store a lone surrogate at all.) CAST(x AS BLOB) gives
    # every byte of the text, NULs included, where SQLite's text functions stop at the first.
    for table, columns in TEXT_COLUMNS.items():
        have = _columns(c, table)
        for col in columns:
            if col in have:
                c.execute(f"UPDATE {table} SET {col} = CAST({col} AS BLOB) "
                          f"WHERE typeof({col}) = 'text' AND instr(CAST({col} AS BLOB), x'00') > 0")


QUANT_REPORTS = """
CREATE TABLE IF NOT EXISTS quant_reports (
    id          TEXT PRIMARY KEY,
    request     TEXT NOT NULL,      -- JSON: the QuantRequest (model, variants, benchmarks, limit, shots, seed, ...)
    status      TEXT NOT NULL,      -- running, finished, cancelled, failed
    owner       TEXT,               -- "host:pid" of the process running it
    created_at  REAL NOT NULL,
    ended_at    REAL,
    timing      TEXT                -- JSON: wall time, time inside the runs, overhead (this process's share)
);
CREATE TABLE IF NOT EXISTS quant_variants (
    report_id   TEXT NOT NULL REFERENCES quant_reports(id) ON DELETE CASCADE,
    variant     TEXT NOT NULL,      -- as asked for: "bf16", "4bit-nodq", "gguf=/path/model.gguf"
    position    INTEGER NOT NULL,   -- 0 is the reference
    status      TEXT NOT NULL,      -- pending, done, failed
    error       TEXT,               -- one sentence when it could not be loaded or run
    model       TEXT,               -- JSON: the loaded model's ModelInfo
    measured    TEXT,               -- JSON: load_s, decode_tok_s, ttft_s, weight_bytes, peak_bytes
    PRIMARY KEY (report_id, variant)
);
CREATE TABLE IF NOT EXISTS quant_runs (
    report_id   TEXT NOT NULL REFERENCES quant_reports(id) ON DELETE CASCADE,
    variant     TEXT NOT NULL,
    benchmark   TEXT NOT NULL,      -- as asked for: "mmlu:mini", "humaneval"
    run_id      TEXT NOT NULL REFERENCES runs(id),
    PRIMARY KEY (report_id, variant, benchmark)
);
"""


def _v5_quant_reports(c: sqlite3.Connection) -> None:
    c.executescript(QUANT_REPORTS)


CHATS = """
CREATE TABLE IF NOT EXISTS chats (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,      -- whose list it is in: "client:<random id from the browser>" or "user:<login>"
    title       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    record      TEXT NOT NULL       -- JSON: system prompt, messages with stats, reply versions, ratings
);
CREATE INDEX IF NOT EXISTS chats_owner_updated ON chats(owner, updated_at);
"""


def _v6_chats(c: sqlite3.Connection) -> None:
    c.executescript(CHATS)


def _v7_run_names_and_verdicts(c: sqlite3.Connection) -> None:
    # runs.name: a name a person gives a run on the page (NULL: shown by its id). votes.verdict: "win", "tie" or
    # "bad" (both are bad, a tie for the ratings but recorded as said); NULL in older rows reads from `winner`.
    if "name" not in _columns(c, "runs"):
        c.execute("ALTER TABLE runs ADD COLUMN name TEXT")
    c.executescript(VOTES)  # a file that claims a version without every table of it (hand-made) gets the table
    if "verdict" not in _columns(c, "votes"):
        c.execute("ALTER TABLE votes ADD COLUMN verdict TEXT")


# index i brings version i to version i + 1
MIGRATIONS = (_v1_runs, _v2_owner, _v3_votes, _v4_text_as_put_writes_it, _v5_quant_reports, _v6_chats,
              _v7_run_names_and_verdicts)
VERSION = len(MIGRATIONS)


def migrate(c: sqlite3.Connection, path: Path) -> None:
    found = c.execute("PRAGMA user_version").fetchone()[0]
    if found > VERSION:
        raise LabError(f"The run history {path} was written by a newer Qwen Lab (schema {found}, this one knows "
                       f"{VERSION}); upgrade, or choose another folder with --runs-dir.")
    for step in MIGRATIONS[found:]:
        with c:
            step(c)
    if found < VERSION:
        c.execute(f"PRAGMA user_version={VERSION}")


def put(value):
    """A value as sqlite3 should bind it: a str SQLite cannot hold as text becomes a BLOB (module docstring)."""
    if not isinstance(value, str):
        return value
    if "\0" not in value:
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:  # a lone surrogate
            pass
    return value.encode("utf-8", "surrogatepass")


def get(value):
    """The str that `put` stored, from TEXT or BLOB; other values as they are. Every BLOB in these tables is
    one `put` wrote, so a BLOB is always text."""
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        # Processes that open a new file at once (torchrun's ranks) would both read version 0 and both try to
        # upgrade their read lock to write, which SQLite answers "database is locked" at once rather than wait:
        # one opens and migrates at a time.
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            migrate(self.conn(), path)

    @classmethod
    def open(cls, directory: str | Path | None = None) -> "Database":
        """lab.db in the run-history folder (created); one sentence when it cannot be opened."""
        d = config.runs_dir(directory)
        path = d / "lab.db"
        try:
            d.mkdir(parents=True, exist_ok=True)
            return cls(path)
        except (OSError, sqlite3.DatabaseError) as e:
            raise LabError(f"The run history {path} cannot be opened ({e}); "
                           "choose another folder with --runs-dir or LAB_RUNS_DIR.") from None

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (the page reads while an evaluation thread writes), in WAL mode."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn


class Store:
    """What reads and writes one part of the run history (runs and samples, votes): its database, opened by folder."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.path = db.path

    @classmethod
    def open(cls, directory: str | Path | None = None):
        return cls(Database.open(directory))

    def conn(self) -> sqlite3.Connection:
        return self.db.conn()
