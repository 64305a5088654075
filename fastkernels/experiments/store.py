"""SQLite results store: one row per finished trial, written in its own transaction.

The store is a single SQLite file (rollback journal, ``synchronous=FULL``), so a sweep killed at
any moment, SIGKILL included, leaves only complete rows: a row is either committed or absent.
Re-running the sweep skips the keys already present.

A fastkernels store is recognised by ``PRAGMA application_id`` (:data:`APPLICATION_ID`) and a
``meta`` table holding the schema version. Any other existing file (text, random bytes, another
application's SQLite database, an empty file) is refused with :class:`StoreError` before SQLite
opens it for writing, so it is never modified. A new store is built under a temporary name and
linked into place complete, so a crash while creating one never leaves a half-made file.

Every problem of the store itself (not a store, corrupt pages, read-only file or folder, locked
by another process for too long, disk full) is a :class:`StoreError` with a one-line message.
Opening for writing runs SQLite's integrity check and a trial write, so that these problems
surface before any trial runs.

Several processes may share one store: a trial is *claimed* (:meth:`ResultsStore.claim`) before
it runs, and a claim whose process died (or, across machines, whose heartbeat stopped) expires,
so each trial is computed once and a killed run's trials are taken over.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import socket
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .trials import learner_config_hash

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "COLUMNS",
    "FLAGS",
    "StoreError",
    "ResultsStore",
    "Owner",
    "process_alive",
]

# "FKDB" as a big-endian 32-bit integer; stored at byte offset 68 of the SQLite header.
APPLICATION_ID = 0x464B4442
# 2: configuration hash, fit status, flags, cost and zero-predictor columns; claims table.
SCHEMA_VERSION = 2

_SQLITE_MAGIC = b"SQLite format 3\x00"
# How long a connection waits for another process's write lock before the store is reported
# as locked.
LOCK_TIMEOUT_S = 60.0
# A claim from another machine expires when its heartbeat is older than this; on this machine
# a claim expires as soon as its process is gone.
CLAIM_TTL_S = 300.0

# (name, SQL type); the order is the column order of the trials table.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("key", "TEXT PRIMARY KEY"),
    ("sweep", "TEXT NOT NULL"),
    ("label", "TEXT NOT NULL"),
    ("learner_type", "TEXT NOT NULL"),
    ("concept", "TEXT NOT NULL"),
    ("n_train", "INTEGER NOT NULL"),
    ("n_test", "INTEGER NOT NULL"),
    ("width", "INTEGER"),
    ("alpha", "REAL NOT NULL"),
    ("beta", "REAL NOT NULL"),
    ("k", "INTEGER NOT NULL"),
    ("seed", "INTEGER NOT NULL"),
    ("test_error", "REAL"),
    ("train_error", "REAL"),
    ("threshold", "REAL NOT NULL"),
    ("hparams", "TEXT NOT NULL"),
    ("wall_time_s", "REAL NOT NULL"),
    ("versions", "TEXT NOT NULL"),
    ("config", "TEXT NOT NULL"),
    ("finished_at", "TEXT NOT NULL"),
    # schema 2; nullable because stores of schema 1 gain them by ALTER TABLE
    ("config_hash", "TEXT"),
    ("status", "TEXT"),
    ("flags", "TEXT"),
    ("fit_time_s", "REAL"),
    ("peak_rss_mib", "REAL"),
    ("zero_error", "REAL"),
    ("device", "TEXT"),
)
_COLUMN_NAMES = tuple(c for c, _ in COLUMNS)
_V1_COLUMNS = _COLUMN_NAMES[: _COLUMN_NAMES.index("config_hash")]
_JSON_COLUMNS = ("hparams", "versions", "config", "status")
# SQLite stores NaN as NULL; these read back as NaN (a diverged fit is a result, not a gap).
_NAN_COLUMNS = ("test_error", "train_error", "fit_time_s", "peak_rss_mib", "zero_error")
# What a row can be marked with; the report marks every cell that holds such a trial.
FLAGS = ("unconverged", "diverged", "grid_edge")


class StoreError(Exception):
    """The path is not a usable fastkernels results store; the message is one line."""


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read_header(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(100)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _sqlite_problem(exc: BaseException) -> str:
    """What a SQLite error means for a results store, in words a user can act on."""
    msg = " ".join(str(exc).split())
    low = msg.lower()
    if "readonly" in low or "read-only" in low:
        return f"not writable ({msg}); check the permissions of the file and of its folder"
    if "unable to open" in low:
        return f"cannot open or write next to the file ({msg}); check its folder's permissions"
    if "locked" in low or "busy" in low:
        return f"locked by another process for more than {LOCK_TIMEOUT_S:g} s ({msg})"
    if "full" in low:
        return f"disk full ({msg})"
    if "malformed" in low or "corrupt" in low or "not a database" in low:
        return f"corrupt ({msg}); restore it from a copy or start a new store"
    return msg


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), else None.

    With the pid it identifies a process uniquely: a pid reused by a later process has another
    start time, so a stale claim is never mistaken for a live one.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def process_alive(pid: int, start: str | None) -> bool:
    """Whether process ``pid``, started at ``start`` (:func:`_process_start`), still runs on
    this machine; without ``/proc`` (or without ``start``) the pid alone decides."""
    current = _process_start(pid)
    if current is not None:
        return start is None or current == start
    try:  # gone, or no /proc to ask
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


@dataclass(frozen=True)
class Owner:
    """Who holds a claim: host name, process id and the process's start time."""

    host: str
    pid: int
    start: str

    @classmethod
    def this_process(cls) -> Owner:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _process_start(pid) or f"t{time.time():.0f}")

    @property
    def id(self) -> str:
        return f"{self.host}:{self.pid}:{self.start}"

    def alive(self, heartbeat: float, ttl: float) -> bool:
        """Whether a claim by this owner with the given last heartbeat still stands."""
        if self.host == socket.gethostname():
            return process_alive(self.pid, self.start)
        return time.time() - heartbeat < ttl


class ResultsStore:
    """A fastkernels results store (SQLite file).

    Parameters
    ----------
    path : str or Path
        The database file. Created (with parent folders) when missing, if ``create``.
    create : bool, default True
        Open for writing: a missing file is created, the file is integrity-checked and a trial
        write proves it writable. With ``False`` the store is only read (reports): a missing
        file is a :class:`StoreError` and nothing is written.

    Raises
    ------
    StoreError
        The file is not a fastkernels store (foreign or empty file), is corrupt, was written by
        a newer schema, is not writable (``create=True``), or is locked by another process for
        more than :data:`LOCK_TIMEOUT_S`. Such a file is left untouched.

    Notes
    -----
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        self._conn = None
        self.writable = bool(create)
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, expected a results database file")
        if self.path.exists():
            self._check_header()
        elif not create:
            raise StoreError(f"{self.path}: no such results store")
        else:
            self._create()
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
            self._conn = sqlite3.connect(
                str(self.path), timeout=LOCK_TIMEOUT_S, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open ({_sqlite_problem(exc)})") from None
        try:
            self._conn.execute("PRAGMA synchronous = FULL")
            self._check_integrity()
            self._check_schema(write=create)
            if create:
                self._probe_write()
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"{self.path}: {_sqlite_problem(exc)}") from None
        except BaseException:
            self.close()
            raise

    # -- opening ------------------------------------------------------------------------------
    def _check_header(self) -> None:
        """Refuse foreign files from their first bytes, before SQLite may write to them."""
        head = _read_header(self.path)
        if not head:
            raise StoreError(
                f"{self.path}: empty file (0 bytes), not a fastkernels results store; remove it "
                "or choose another path"
            )
        if not head.startswith(_SQLITE_MAGIC):
            raise StoreError(
                f"{self.path}: not a fastkernels results store (not an SQLite database)"
            )
        if len(head) < 100:
            raise StoreError(f"{self.path}: not a fastkernels results store (truncated header)")
        app_id = int.from_bytes(head[68:72], "big", signed=True)
        if app_id != APPLICATION_ID:
            raise StoreError(
                f"{self.path}: not a fastkernels results store (SQLite database with "
                f"application_id {app_id}, expected {APPLICATION_ID})"
            )

    def _create(self) -> None:
        """Build a new store under a temporary name, then link it into place complete.

        ``os.link`` fails if the path appeared meanwhile (another process created it first):
        then that store is used. A crash leaves at most the temporary file, never a store
        without its tables.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create folder ({exc.strerror})") from None
        tmp = self.path.with_name(f".{self.path.name}.creating-{os.getpid()}")
        try:
            conn = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                _initialise(conn)
                conn.execute("COMMIT")
            finally:
                conn.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                self._check_header()
            except OSError:
                # A file system without hard links: a rename, which cannot refuse to replace a
                # store another process created in the same instant (rare; first run only).
                os.replace(tmp, self.path)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot create ({_sqlite_problem(exc)})") from None
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create ({exc.strerror or exc})") from None
        finally:
            for p in (tmp, tmp.with_name(tmp.name + "-journal")):
                try:
                    p.unlink()
                except OSError:
                    pass

    def _check_integrity(self) -> None:
        """SQLite's quick integrity check: corrupt pages are found on open, not mid-sweep."""
        problems = [r[0] for r in self._conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            first = " ".join(str(problems[0]).split())
            raise StoreError(
                f"{self.path}: corrupt (integrity check: {first}"
                f"{'' if len(problems) == 1 else f'; {len(problems)} problems'}); restore it "
                "from a copy or start a new store"
            )

    def _check_schema(self, write: bool) -> None:
        conn = self._conn
        # A read-only check (reports) must not need write access.
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            if app_id != APPLICATION_ID:
                raise StoreError(
                    f"{self.path}: not a fastkernels results store (application_id {app_id})"
                )
            version = self._schema_version()
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: results store schema {version} is newer than this "
                    f"fastkernels understands ({SCHEMA_VERSION}); upgrade fastkernels"
                )
            if version < SCHEMA_VERSION and write:
                _migrate(conn, version)
            self.schema_version = SCHEMA_VERSION if write else version
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _probe_write(self) -> None:
        """One real write (journal included), so that a read-only file or folder is an error
        now rather than after the first trial has computed."""
        with self._transaction():
            self._conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_opened', ?)",
                (_utcnow(),),
            )

    def _schema_version(self) -> int:
        try:
            row = self._conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
        except sqlite3.OperationalError:
            row = None
        if row is None or not str(row[0]).isdigit():
            raise StoreError(f"{self.path}: not a fastkernels results store (no schema version)")
        return int(row[0])

    def _transaction(self):
        return _Transaction(self)

    def _need_write(self, what: str) -> None:
        if not self.writable:
            raise StoreError(f"{self.path}: opened read-only, cannot {what}")

    # -- writing ------------------------------------------------------------------------------
    def add(self, row: dict[str, Any], owner: Owner | None = None) -> bool:
        """Insert one finished trial in its own transaction (and release its claim).

        Parameters
        ----------
        row : dict
            Exactly the keys of :data:`COLUMNS`; ``hparams``, ``versions``, ``config`` and
            ``status`` may be dicts (they are stored as JSON), ``flags`` a list of
            :data:`FLAGS`.
        owner : Owner, optional
            Who computed it. Any claim on this key is released in the same transaction.

        Returns
        -------
        bool
            ``True`` if inserted, ``False`` if a row with this key already exists (the first
            result wins).

        Raises
        ------
        StoreError
            The write failed (disk full, locked too long, file became read-only).
        """
        self._need_write("add trials")
        missing = [c for c in _COLUMN_NAMES if c not in row]
        extra = [c for c in row if c not in _COLUMN_NAMES]
        if missing or extra:
            raise ValueError(f"ResultsStore.add: missing columns {missing}, unknown {extra}")
        bad = [f for f in row["flags"] or () if f not in FLAGS]
        if bad:
            raise ValueError(f"ResultsStore.add: unknown flags {bad}; expected some of {FLAGS}")
        values = []
        for name in _COLUMN_NAMES:
            v = row[name]
            if name in _JSON_COLUMNS and not isinstance(v, str):
                v = json.dumps(_jsonable(v), sort_keys=True)
            elif name == "flags" and not isinstance(v, str):
                v = ",".join(v or ())
            elif name in _NAN_COLUMNS and v is not None and not math.isfinite(float(v)):
                v = None
            values.append(v)
        placeholders = ", ".join("?" for _ in _COLUMN_NAMES)
        sql = f"INSERT OR IGNORE INTO trials ({', '.join(_COLUMN_NAMES)}) VALUES ({placeholders})"
        with self._transaction():
            cur = self._conn.execute(sql, values)
            # A stored trial needs no claim, whoever held it.
            self._conn.execute("DELETE FROM claims WHERE key = ?", (row["key"],))
        return cur.rowcount == 1

    def record_sweep(self, name: str, description: str, spec: dict) -> None:
        """Remember a sweep's description and spec (JSON), replacing an older record."""
        self._need_write("record a sweep")
        with self._transaction():
            self._conn.execute(
                "INSERT OR REPLACE INTO sweeps (name, description, spec, updated_at) "
                "VALUES (?, ?, ?, ?)",
                (name, description, json.dumps(_jsonable(spec), sort_keys=True), _utcnow()),
            )

    # -- claims -------------------------------------------------------------------------------
    def claim(self, key: str, owner: Owner, ttl: float = CLAIM_TTL_S) -> str:
        """Claim trial ``key`` for ``owner`` before computing it.

        Returns
        -------
        {"claimed", "done", "busy"}
            ``"claimed"``: the caller computes it (a claim whose owner died is taken over);
            ``"done"``: it is stored already; ``"busy"``: a live process holds it.
        """
        self._need_write("claim trials")
        conn = self._conn
        with self._transaction():
            if conn.execute("SELECT 1 FROM trials WHERE key = ?", (key,)).fetchone():
                return "done"
            held = conn.execute(
                "SELECT owner, host, pid, start, heartbeat FROM claims WHERE key = ?", (key,)
            ).fetchone()
            if held is not None and held[0] != owner.id:
                if Owner(held[1], int(held[2]), held[3]).alive(float(held[4]), ttl):
                    return "busy"
            now = time.time()
            conn.execute(
                "INSERT OR REPLACE INTO claims (key, owner, host, pid, start, claimed_at, "
                "heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, owner.id, owner.host, owner.pid, owner.start, now, now),
            )
        return "claimed"

    def release(self, key: str, owner: Owner) -> None:
        """Drop ``owner``'s claim on ``key`` (the trial failed or was interrupted)."""
        with self._transaction():
            self._conn.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (key, owner.id))

    def heartbeat(self, owner: Owner) -> None:
        """Mark ``owner``'s claims as alive (for processes on other machines)."""
        with self._transaction():
            self._conn.execute(
                "UPDATE claims SET heartbeat = ? WHERE owner = ?", (time.time(), owner.id)
            )

    def claims(self) -> list[dict[str, Any]]:
        """Current claims: dicts with ``key``, ``owner``, ``claimed_at``, ``heartbeat``."""
        cur = self._execute("SELECT key, owner, claimed_at, heartbeat FROM claims ORDER BY key")
        return [dict(zip(("key", "owner", "claimed_at", "heartbeat"), r)) for r in cur]

    # -- unsaved results ----------------------------------------------------------------------
    def spill_paths(self) -> list[Path]:
        """Files holding results that could not be written to this store (see :func:`spill`)."""
        pattern = f"{_spill_stem(self.path)}-*.json"
        found: list[Path] = []
        for folder in (self.path.parent, Path(tempfile.gettempdir())):
            found += sorted(folder.glob(pattern))
        return found

    def import_spills(self) -> int:
        """Add the rows of :meth:`spill_paths` files and delete the files; returns rows added.

        A file that cannot be read as rows of this store is left in place and named in a
        :class:`StoreError`.
        """
        added = 0
        for p in self.spill_paths():
            try:
                rows = json.loads(p.read_text(encoding="utf-8"))
                if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                    raise ValueError("expected a JSON list of rows")
                for r in rows:
                    added += self.add(r)
            except (OSError, ValueError) as exc:
                raise StoreError(
                    f"{p}: unsaved results that cannot be imported ({exc}); move the file away "
                    "to continue"
                ) from None
            p.unlink()
        return added

    # -- reading ------------------------------------------------------------------------------
    def _execute(self, sql: str, args: tuple = ()) -> list:
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {_sqlite_problem(exc)}") from None

    def finished_keys(self) -> set[str]:
        """Keys of every stored trial."""
        return {r[0] for r in self._execute("SELECT key FROM trials")}

    def __len__(self) -> int:
        return self._execute("SELECT count(*) FROM trials")[0][0]

    def rows(self, sweep: str | None = None) -> list[dict[str, Any]]:
        """Stored trials in insertion order, as dicts keyed by column name.

        JSON columns are decoded, ``flags`` is a list; a NULL number (SQLite's form of NaN)
        reads back as NaN. Rows of a schema-1 store get the schema-2 fields filled in from what
        they recorded (configuration hash of their stored learner config, the solver status and
        cost kept in ``hparams``).
        """
        cols = _COLUMN_NAMES if self.schema_version >= 2 else _V1_COLUMNS
        sql = f"SELECT {', '.join(cols)} FROM trials"
        args: tuple = ()
        if sweep is not None:
            sql += " WHERE sweep = ?"
            args = (sweep,)
        out = []
        for rec in self._execute(sql + " ORDER BY rowid", args):
            row = dict(zip(cols, rec))
            for name in _JSON_COLUMNS:
                if row.get(name) is not None:
                    try:
                        row[name] = json.loads(row[name])
                    except (TypeError, ValueError) as exc:
                        raise StoreError(
                            f"{self.path}: corrupt row {row['key']!r} (column {name}: {exc}); "
                            "restore the store from a copy or start a new one"
                        ) from None
            for name in _NAN_COLUMNS:
                if row.get(name) is None:
                    row[name] = math.nan
            if row.get("flags") is not None:
                row["flags"] = [f for f in row["flags"].split(",") if f]
            out.append(_fill_v1(row))
        return out

    def sweeps(self) -> list[dict[str, Any]]:
        """Recorded sweeps: dicts with ``name``, ``description``, ``spec`` (a dict), ``updated_at``.

        ``spec`` is :meth:`SweepSpec.to_dict`; reports read ``[report] c`` from it.
        """
        cur = self._execute("SELECT name, description, spec, updated_at FROM sweeps ORDER BY name")
        return [
            {"name": n, "description": d, "spec": json.loads(s), "updated_at": u}
            for n, d, s, u in cur
        ]

    def meta(self) -> dict[str, str]:
        """The ``meta`` table (schema version, creation time and version)."""
        return dict(self._execute("SELECT key, value FROM meta"))

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; SQLite errors become StoreError."""

    def __init__(self, store: ResultsStore):
        self.store = store

    def __enter__(self):
        try:
            self.store._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.store.path}: {_sqlite_problem(exc)}") from None

    def __exit__(self, exc_type, exc, tb):
        conn = self.store._conn
        if exc_type is None:
            try:
                conn.execute("COMMIT")
                return False
            except sqlite3.Error as err:
                exc = err
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"{self.store.path}: {_sqlite_problem(exc)}") from None
        return False


def _initialise(conn: sqlite3.Connection) -> None:
    """Create the tables of a new store (inside the caller's transaction).

    PRAGMA application_id is transactional, so the id and the tables appear together.
    """
    from .. import __version__

    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [
            ("schema_version", str(SCHEMA_VERSION)),
            ("created_at", _utcnow()),
            ("created_by", f"fastkernels {__version__}"),
        ],
    )
    cols = ", ".join(f"{name} {sqltype}" for name, sqltype in COLUMNS)
    conn.execute(f"CREATE TABLE trials ({cols})")
    conn.execute(
        "CREATE TABLE sweeps (name TEXT PRIMARY KEY, description TEXT NOT NULL, "
        "spec TEXT NOT NULL, updated_at TEXT NOT NULL)"
    )
    _create_claims(conn)


def _create_claims(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL, "
        "pid INTEGER NOT NULL, start TEXT NOT NULL, claimed_at REAL NOT NULL, "
        "heartbeat REAL NOT NULL)"
    )


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a store of an older schema up to :data:`SCHEMA_VERSION` (inside a transaction)."""
    if version < 2:
        for name, sqltype in COLUMNS[len(_V1_COLUMNS) :]:
            conn.execute(f"ALTER TABLE trials ADD COLUMN {name} {sqltype}")
        _create_claims(conn)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


def _fill_v1(row: dict) -> dict:
    """Schema-2 fields for a row written before they existed (from what the row recorded)."""
    hp = row.get("hparams") or {}
    if row.get("config_hash") is None:
        learner = row["config"]["learner"]
        row["config_hash"] = learner_config_hash({"params": {}, **learner})
    if row.get("status") is None:
        solver = hp.get("solver_status")
        row["status"] = {"kind": "kernel", **solver} if isinstance(solver, dict) else {}
    if row.get("flags") is None:
        row["flags"] = ["unconverged"] if row["status"].get("converged") is False else []
    for name, old in (("fit_time_s", "fit_time_s"), ("peak_rss_mib", "fit_peak_rss_mib")):
        if name not in row or (isinstance(row[name], float) and math.isnan(row[name])):
            v = hp.get(old)
            row[name] = float(v) if isinstance(v, (int, float)) else math.nan
    row.setdefault("zero_error", math.nan)
    if row.get("device") is None:
        row["device"] = ""
    return row


def _spill_stem(path: Path) -> str:
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    return f"{path.name}.unsaved-{digest}"


def spill(path: str | Path, rows: list[dict]) -> Path:
    """Keep rows that could not be written to the store at ``path`` in a JSON file.

    The file goes next to the store, or to the temporary folder when that fails;
    :meth:`ResultsStore.import_spills` (run when a sweep opens the store) adds them later.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    OSError
        Neither folder could take the file.
    """
    path = Path(path)
    name = f"{_spill_stem(path)}-{os.getpid()}-{time.time_ns()}.json"
    text = json.dumps([_jsonable(r) for r in rows], sort_keys=True)
    last: OSError | None = None
    for folder in (path.parent, Path(tempfile.gettempdir())):
        target = folder / name
        try:
            target.write_text(text, encoding="utf-8")
            return target
        except OSError as exc:
            last = exc
            try:
                target.unlink()
            except OSError:
                pass
    raise last  # type: ignore[misc]


def _jsonable(obj):
    """Plain JSON values from what learners put in ``hparams_`` (numpy/torch scalars, tuples)."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    item = getattr(obj, "item", None)
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):  # numpy arrays/scalars, torch tensors
        return _jsonable(tolist())
    if callable(item):  # pragma: no cover - scalar types without tolist
        return _jsonable(item())
    return repr(obj)
