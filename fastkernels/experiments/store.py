"""SQLite results store: one row per finished trial, written in its own transaction.

The store is a single SQLite file (rollback journal, ``synchronous=FULL``), so a sweep killed at
any moment, SIGKILL included, leaves only complete rows: a row is either committed or absent.
Re-running the sweep skips the keys already present.

A fastkernels store is recognised by ``PRAGMA application_id`` (:data:`APPLICATION_ID`) and a
``meta`` table holding the schema version. Any other existing file (text, random bytes, another
application's SQLite database) is refused with :class:`StoreError` before SQLite opens it for
writing, so it is never modified.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "COLUMNS", "StoreError", "ResultsStore"]

# "FKDB" as a big-endian 32-bit integer; stored at byte offset 68 of the SQLite header.
APPLICATION_ID = 0x464B4442
SCHEMA_VERSION = 1

_SQLITE_MAGIC = b"SQLite format 3\x00"

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
)
_COLUMN_NAMES = tuple(c for c, _ in COLUMNS)
_JSON_COLUMNS = ("hparams", "versions", "config")
# SQLite stores NaN as NULL; these read back as NaN (a diverged fit is a result, not a gap).
_NAN_COLUMNS = ("test_error", "train_error")


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


class ResultsStore:
    """A fastkernels results store (SQLite file).

    Parameters
    ----------
    path : str or Path
        The database file. Created (with parent folders) when missing or empty, if ``create``.
    create : bool, default True
        Whether a missing file may be created; with ``False`` a missing file is a
        :class:`StoreError` (reports read existing stores only).

    Raises
    ------
    StoreError
        The file exists but is not a fastkernels store, was written by a newer schema, or
        cannot be opened. Such a file is left untouched.

    Notes
    -----
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, expected a results database file")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists:
            self._check_header()
        elif not create:
            raise StoreError(f"{self.path}: no such results store")
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"{self.path}: cannot create folder ({exc.strerror})") from None
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
            self._conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open ({exc})") from None
        try:
            self._conn.execute("PRAGMA synchronous = FULL")
            self._init_or_check(write=create)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(
                f"{self.path}: not a usable fastkernels results store ({exc})"
            ) from None
        except StoreError:
            self._conn.close()
            raise

    # -- opening ------------------------------------------------------------------------------
    def _check_header(self) -> None:
        """Refuse foreign files from their first bytes, before SQLite may write to them."""
        head = _read_header(self.path)
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

    def _init_or_check(self, write: bool) -> None:
        conn = self._conn
        # IMMEDIATE takes the write lock up front so that two processes creating the same store
        # cannot both initialise it; a read-only check (reports) must not need write access.
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            n_objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id == 0 and n_objects == 0:
                # A new or empty file (or one whose creation was rolled back): initialise it.
                # PRAGMA application_id is transactional, so the id and the tables appear
                # together or not at all.
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                from .. import __version__

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
            elif app_id != APPLICATION_ID:
                raise StoreError(
                    f"{self.path}: not a fastkernels results store (application_id {app_id})"
                )
            else:
                version = self._schema_version()
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path}: results store schema {version} is newer than this "
                        f"fastkernels understands ({SCHEMA_VERSION}); upgrade fastkernels"
                    )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

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

    # -- writing ------------------------------------------------------------------------------
    def add(self, row: dict[str, Any]) -> bool:
        """Insert one finished trial in its own transaction.

        Parameters
        ----------
        row : dict
            Exactly the keys of :data:`COLUMNS`; ``hparams``, ``versions`` and ``config`` may be
            dicts (they are stored as JSON).

        Returns
        -------
        bool
            ``True`` if inserted, ``False`` if a row with this key already exists (the first
            result wins, e.g. when two runners race on the same sweep).
        """
        missing = [c for c in _COLUMN_NAMES if c not in row]
        extra = [c for c in row if c not in _COLUMN_NAMES]
        if missing or extra:
            raise ValueError(f"ResultsStore.add: missing columns {missing}, unknown {extra}")
        values = []
        for name in _COLUMN_NAMES:
            v = row[name]
            if name in _JSON_COLUMNS and not isinstance(v, str):
                v = json.dumps(_jsonable(v), sort_keys=True)
            values.append(v)
        placeholders = ", ".join("?" for _ in _COLUMN_NAMES)
        sql = f"INSERT OR IGNORE INTO trials ({', '.join(_COLUMN_NAMES)}) VALUES ({placeholders})"
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(sql, values)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return cur.rowcount == 1

    def record_sweep(self, name: str, description: str, spec: dict) -> None:
        """Remember a sweep's description and spec (JSON), replacing an older record."""
        self._conn.execute(
            "INSERT OR REPLACE INTO sweeps (name, description, spec, updated_at) "
            "VALUES (?, ?, ?, ?)",
            (name, description, json.dumps(_jsonable(spec), sort_keys=True), _utcnow()),
        )

    # -- reading ------------------------------------------------------------------------------
    def finished_keys(self) -> set[str]:
        """Keys of every stored trial."""
        return {r[0] for r in self._conn.execute("SELECT key FROM trials")}

    def __len__(self) -> int:
        return self._conn.execute("SELECT count(*) FROM trials").fetchone()[0]

    def rows(self, sweep: str | None = None) -> list[dict[str, Any]]:
        """Stored trials in insertion order, as dicts keyed by column name.

        JSON columns are decoded; a NULL error (SQLite's form of NaN) reads back as NaN.
        """
        sql = f"SELECT {', '.join(_COLUMN_NAMES)} FROM trials"
        args: tuple = ()
        if sweep is not None:
            sql += " WHERE sweep = ?"
            args = (sweep,)
        out = []
        for rec in self._conn.execute(sql + " ORDER BY rowid", args):
            row = dict(zip(_COLUMN_NAMES, rec))
            for name in _JSON_COLUMNS:
                row[name] = json.loads(row[name])
            for name in _NAN_COLUMNS:
                if row[name] is None:
                    row[name] = math.nan
            out.append(row)
        return out

    def sweeps(self) -> list[dict[str, Any]]:
        """Recorded sweeps: dicts with ``name``, ``description``, ``spec`` (a dict), ``updated_at``.

        ``spec`` is :meth:`SweepSpec.to_dict`; reports read ``[report] c`` from it.
        """
        cur = self._conn.execute(
            "SELECT name, description, spec, updated_at FROM sweeps ORDER BY name"
        )
        return [
            {"name": n, "description": d, "spec": json.loads(s), "updated_at": u}
            for n, d, s, u in cur
        ]

    def meta(self) -> dict[str, str]:
        """The ``meta`` table (schema version, creation time and version)."""
        return dict(self._conn.execute("SELECT key, value FROM meta"))

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
