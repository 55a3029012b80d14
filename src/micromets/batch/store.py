"""The results store: one SQLite database (WAL mode) indexing every slide, lesion, node and patient result.

The store is the whole interface the batch needs (`open_store(url)` returns it): `begin_run`, `finish_run`,
`done_results`, `record_result`, `record_failure`, `record_case`, `touch_path` and the read side
`slides`, `nodes`, `patients`, `runs`. SQLite is the only back end today; ``postgresql://`` URLs are refused with
a clear error until one is written behind the same methods.

Tables (one row per key, never duplicated):

- ``runs``: one row per batch invocation, with micromets version, model name/version and settings.
- ``slides``: key (``content_id``, ``settings_key``): the slide content (see `micromets.batch.ident`) computed
  with one model + settings; ``status`` is ``done`` or ``failed``; a failed input that has no content id
  (missing file, directory named like a slide) is keyed ``path:<absolute path>``.
- ``lesions``: the lesions of a done slide (mm, mm², probability), deleted with their slide.
- ``nodes`` and ``patients``: per-case results (``case.json``) when the batch input was a case manifest.

Every write is one transaction (``BEGIN IMMEDIATE`` … ``COMMIT``): a process killed at any moment leaves the
previous consistent state. Only the process that owns the batch (the Dask client) writes.
"""

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from micromets.errors import MicrometsError
from micromets.slide import slide_id_of

SCHEMA_VERSION = "micromets.results-store/1"

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    started_utc TEXT NOT NULL, finished_utc TEXT,
    micromets_version TEXT, model_name TEXT, model_version TEXT,
    settings_key TEXT NOT NULL, settings_json TEXT NOT NULL,
    host TEXT, executor TEXT,
    n_inputs INTEGER, n_done INTEGER, n_failed INTEGER, n_skipped INTEGER
);
CREATE TABLE IF NOT EXISTS slides (
    content_id TEXT NOT NULL, settings_key TEXT NOT NULL,
    run_id INTEGER REFERENCES runs(run_id),
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    path TEXT NOT NULL, slide_id TEXT, error TEXT, out_dir TEXT,
    node_class TEXT, largest_deposit_mm REAL, max_probability REAL, n_lesions INTEGER,
    l0_mpp REAL, stain TEXT, tissue_area_mm2 REAL, threshold REAL,
    result_json TEXT, finished_utc TEXT NOT NULL, elapsed_s REAL,
    PRIMARY KEY (content_id, settings_key)
);
CREATE INDEX IF NOT EXISTS slides_path ON slides(path, settings_key);
CREATE INDEX IF NOT EXISTS slides_out_dir ON slides(out_dir);
CREATE TABLE IF NOT EXISTS lesions (
    content_id TEXT NOT NULL, settings_key TEXT NOT NULL, lesion_id INTEGER NOT NULL,
    class TEXT, diameter_mm REAL, area_mm2 REAL, ellipse_major_mm REAL, max_probability REAL, n_cells INTEGER,
    PRIMARY KEY (content_id, settings_key, lesion_id),
    FOREIGN KEY (content_id, settings_key) REFERENCES slides(content_id, settings_key) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS nodes (
    patient TEXT NOT NULL, node TEXT NOT NULL, settings_key TEXT NOT NULL, run_id INTEGER,
    node_class TEXT, decided_by TEXT, largest_deposit_mm REAL, osna_copies_per_ul REAL, slides_json TEXT,
    PRIMARY KEY (patient, node, settings_key)
);
CREATE TABLE IF NOT EXISTS patients (
    patient TEXT NOT NULL, settings_key TEXT NOT NULL, run_id INTEGER,
    stage_mode TEXT, pn_stage TEXT, stage_reason TEXT, case_json TEXT,
    PRIMARY KEY (patient, settings_key)
);
"""


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def open_store(url: str | Path, read_only: bool = False) -> "SqliteStore":
    """Open (creating if needed) the results store at `url`: a file path or ``sqlite:///path``. With
    ``read_only`` nothing is created or written (a read-only file is fine) and the file must already be a
    micromets store: an empty file or another program's SQLite database is refused, never changed.

    Raises `MicrometsError` for unsupported URLs, a file that is not a micromets SQLite store, or a folder that
    cannot hold the database.
    """
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        raise MicrometsError(f"--db {text}: PostgreSQL stores are not implemented yet; use a SQLite file path")
    if "://" in text and not text.startswith("sqlite:///"):
        raise MicrometsError(f"--db {text}: unknown store URL (give a file path or sqlite:///path)")
    path = Path(text.removeprefix("sqlite:///")) if text.startswith("sqlite:///") else Path(text)
    return SqliteStore(path, read_only=read_only)


class SqliteStore:
    """Results store in one SQLite file (WAL journal, foreign keys on, one transaction per write)."""

    def __init__(self, path: Path, read_only: bool = False):
        self.path = Path(path)
        if self.path.is_dir():
            raise MicrometsError(f"--db {self.path}: is a directory, not a database file")
        if read_only:
            self._open_read_only()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=60.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(f"BEGIN IMMEDIATE;{_DDL}COMMIT;")
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise MicrometsError(f"--db {self.path}: store schema {row[0]!r}, this micromets reads {SCHEMA_VERSION!r}")
        except sqlite3.DatabaseError as err:
            raise MicrometsError(f"--db {self.path}: not a usable SQLite database ({err})") from err
        except OSError as err:
            raise MicrometsError(f"--db {self.path}: cannot create the database ({err.strerror})") from err

    def _open_read_only(self) -> None:
        """Connect without any write (``mode=ro``) and check that the file is a micromets store of this schema."""
        if not self.path.is_file():
            raise MicrometsError(f"--db {self.path}: no such results store")
        # A WAL store in a folder this user cannot write has no -shm to share: it is then read as immutable
        # (nobody can be writing a store where no one may create its journal).
        for query in ("mode=ro", "immutable=1"):
            try:
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?{query}", uri=True, timeout=60.0)
                self._db.row_factory = sqlite3.Row
                tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() \
                    if "meta" in tables else None
                break
            except sqlite3.OperationalError as err:
                if query == "immutable=1" or os.access(self.path.parent, os.W_OK):
                    raise MicrometsError(f"--db {self.path}: cannot read ({err})") from err
            except sqlite3.DatabaseError as err:
                raise MicrometsError(f"--db {self.path}: not a micromets results store ({err})") from err
        if row is None or not {"slides", "runs"} <= tables:
            self._db.close()
            raise MicrometsError(f"--db {self.path}: not a micromets results store (written by `micromets batch`)")
        if row[0] != SCHEMA_VERSION:
            self._db.close()
            raise MicrometsError(f"--db {self.path}: store schema {row[0]!r}, this micromets reads {SCHEMA_VERSION!r}")

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        self._db.close()

    def __enter__(self) -> "SqliteStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back on any error, which is re-raised as `MicrometsError` for disk
        and I/O problems (disk full, read-only file) so the CLI reports it in one line."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            raise MicrometsError(f"--db {self.path}: cannot write ({err})") from err
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException as err:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if isinstance(err, sqlite3.OperationalError):
                raise MicrometsError(f"--db {self.path}: write failed, nothing recorded ({err})") from err
            raise

    # ---- runs -------------------------------------------------------------------------------------------

    def begin_run(self, settings: dict, settings_key: str, micromets_version: str, executor: str,
                  n_inputs: int) -> int:
        """Record the start of a batch run; return its ``run_id``."""
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (started_utc, micromets_version, model_name, model_version, settings_key,"
                " settings_json, host, executor, n_inputs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_utc_now(), micromets_version, settings.get("model_name"), settings.get("model_version"),
                 settings_key, json.dumps(settings, sort_keys=True), socket.gethostname(), executor, n_inputs))
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, n_done: int, n_failed: int, n_skipped: int) -> None:
        """Record the end of a run and its counts."""
        with self._transaction() as db:
            db.execute("UPDATE runs SET finished_utc = ?, n_done = ?, n_failed = ?, n_skipped = ? WHERE run_id = ?",
                       (_utc_now(), n_done, n_failed, n_skipped, run_id))

    # ---- slides -----------------------------------------------------------------------------------------

    def done_results(self) -> dict[tuple[str, str], dict]:
        """Every done slide: ``{(content_id, settings_key): {"path", "out_dir", "slide_id"}}``."""
        rows = self._db.execute("SELECT content_id, settings_key, path, out_dir, slide_id FROM slides"
                                " WHERE status = 'done'")
        return {(r["content_id"], r["settings_key"]): {"path": r["path"], "out_dir": r["out_dir"],
                                                       "slide_id": r["slide_id"]} for r in rows}

    def touch_path(self, content_id: str, settings_key: str, path: str) -> None:
        """A done slide was found again (maybe renamed): remember where it lives now."""
        with self._transaction() as db:
            db.execute("UPDATE slides SET path = ? WHERE content_id = ? AND settings_key = ?",
                       (path, content_id, settings_key))

    def record_result(self, run_id: int, content_id: str, settings_key: str, path: str, out_dir: str,
                      result: dict, max_probability: float | None, elapsed_s: float) -> None:
        """Commit one done slide and its lesions in one transaction.

        `result` is the slide's result.json dict (schema ``micromets.slide-result/1``). A row of the same path
        and settings with another content id (an earlier version of the file) is superseded: deleted with its lesions.
        """
        lesions = result.get("lesions") or []
        with self._transaction() as db:
            db.execute("DELETE FROM slides WHERE settings_key = ? AND (content_id = ? OR path = ?)",
                       (settings_key, content_id, path))
            db.execute(
                "INSERT INTO slides (content_id, settings_key, run_id, status, path, slide_id, out_dir, node_class,"
                " largest_deposit_mm, max_probability, n_lesions, l0_mpp, stain, tissue_area_mm2, threshold,"
                " result_json, finished_utc, elapsed_s) VALUES (?, ?, ?, 'done', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (content_id, settings_key, run_id, path, result.get("slide_id"), out_dir, result.get("node_class"),
                 result.get("largest_deposit_mm"), max_probability, result.get("n_lesions", len(lesions)),
                 result.get("l0_mpp"), result.get("stain"), result.get("tissue_area_mm2"), result.get("threshold"),
                 json.dumps(result), _utc_now(), elapsed_s))
            db.executemany(
                "INSERT INTO lesions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(content_id, settings_key, les.get("id", i + 1), les.get("class"), les.get("diameter_mm"),
                  les.get("area_mm2"), les.get("ellipse_major_mm"), les.get("max_probability"), les.get("n_cells"))
                 for i, les in enumerate(lesions)])

    def record_failure(self, run_id: int, content_id: str, settings_key: str, path: str, error: str,
                       elapsed_s: float) -> None:
        """Commit one failed slide (its reason in `error`); a done result of the same content is kept."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO slides (content_id, settings_key, run_id, status, path, slide_id, error, finished_utc,"
                " elapsed_s) VALUES (?, ?, ?, 'failed', ?, ?, ?, ?, ?)"
                " ON CONFLICT (content_id, settings_key) DO UPDATE SET run_id = excluded.run_id, path = excluded.path,"
                " error = excluded.error, finished_utc = excluded.finished_utc, elapsed_s = excluded.elapsed_s"
                " WHERE status = 'failed'",
                (content_id, settings_key, run_id, path, slide_id_of(path), error, _utc_now(), elapsed_s))

    # ---- cases ------------------------------------------------------------------------------------------

    def record_case(self, run_id: int, settings_key: str, case: dict) -> None:
        """Commit one patient's ``case.json`` dict (schema ``micromets.case/1``) and its nodes in one transaction."""
        patient = str(case["patient"])
        with self._transaction() as db:
            db.execute("DELETE FROM nodes WHERE patient = ? AND settings_key = ?", (patient, settings_key))
            db.execute("INSERT OR REPLACE INTO patients VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (patient, settings_key, run_id, case.get("stage_mode"), case.get("pn_stage"),
                        case.get("stage_reason"), json.dumps(case)))
            db.executemany(
                "INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(patient, str(n["node"]), settings_key, run_id, n.get("node_class"), n.get("decided_by"),
                  n.get("largest_deposit_mm"), n.get("osna_copies_per_ul"), json.dumps(n.get("slides", [])))
                 for n in case.get("nodes", [])])

    # ---- read side --------------------------------------------------------------------------------------

    def slides(self, status: str | None = None) -> list[dict]:
        """All slide rows (without the stored result.json), most suspicious first (max probability, then
        largest deposit, descending; failed slides last)."""
        sql = ("SELECT content_id, settings_key, run_id, status, path, slide_id, error, out_dir, node_class,"
               " largest_deposit_mm, max_probability, n_lesions, l0_mpp, stain, tissue_area_mm2, threshold,"
               " finished_utc, elapsed_s FROM slides")
        args: tuple = ()
        if status is not None:
            sql += " WHERE status = ?"
            args = (status,)
        sql += (" ORDER BY status = 'failed', max_probability IS NULL, max_probability DESC,"
                " largest_deposit_mm DESC, path")
        return [dict(r) for r in self._db.execute(sql, args)]

    def result(self, content_id: str, settings_key: str) -> dict | None:
        """The stored result.json dict of one done slide, or None."""
        row = self._db.execute("SELECT result_json FROM slides WHERE content_id = ? AND settings_key = ?",
                               (content_id, settings_key)).fetchone()
        return None if row is None or row[0] is None else json.loads(row[0])

    def lesions(self) -> list[dict]:
        """All lesion rows with their slide's id and path, largest first."""
        return [dict(r) for r in self._db.execute(
            "SELECT s.slide_id, s.path, l.* FROM lesions l JOIN slides s USING (content_id, settings_key)"
            " ORDER BY l.diameter_mm DESC")]

    def nodes(self) -> list[dict]:
        """All node rows."""
        return [dict(r) for r in self._db.execute("SELECT * FROM nodes ORDER BY patient, node")]

    def patients(self) -> list[dict]:
        """All patient rows (without the stored case.json)."""
        return [dict(r) for r in self._db.execute(
            "SELECT patient, settings_key, run_id, stage_mode, pn_stage, stage_reason FROM patients ORDER BY patient")]

    def runs(self) -> list[dict]:
        """All runs, oldest first."""
        return [dict(r) for r in self._db.execute("SELECT * FROM runs ORDER BY run_id")]

    def integrity_ok(self) -> bool:
        """SQLite's own ``PRAGMA integrity_check`` says the file is sound."""
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
