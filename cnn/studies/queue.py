"""The runs of a sweep as a queue in a database (`--storage URL`: PostgreSQL, MySQL or SQLite through
SQLAlchemy) that workers on several machines share: each claims the next unclaimed run, beats a heartbeat
while it trains it, and marks it done; a run whose worker fell silent is claimed again and resumed from its
checkpoint.

A claim locks the row it reads where the database can (`FOR UPDATE SKIP LOCKED` on PostgreSQL and MySQL;
SQLite takes its write lock when the transaction begins) and names the state it saw, so that two workers
never take one run. A worker stopped by a signal releases its run. The tables of the sweep are written once,
by the worker that takes `take_collect` when every run is done. Imports nothing of `cnn` but its errors."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from cnn.errors import StorageError

WAITING, RUNNING, DONE = "waiting", "running", "done"
STALE_BEATS = 3  # a worker silent for this many heartbeats is taken for dead (Optuna's grace period, alike)
CONNECT_TIMEOUT = 10  # seconds to reach the server before the storage is refused


def database_url(url: str) -> str:
    """`url` with the driver this project installs (`pip install -e '.[cluster]'`: psycopg 3) for a bare
    `postgresql://` or `postgres://`; other URLs as given."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare) :]
    return url


def where(url: str) -> str:
    """The server of `url` as the messages name it: 'host:port/database' (the password never), or the file
    of a SQLite database."""
    from sqlalchemy.engine import make_url

    parsed = make_url(database_url(url))
    if parsed.get_backend_name() == "sqlite":
        return f"the SQLite file {parsed.database or ':memory:'}"
    port = parsed.port or {"postgresql": 5432, "mysql": 3306}.get(parsed.get_backend_name(), "?")
    return f"{parsed.host or 'localhost'}:{port}/{parsed.database or ''}"


def connect(url: str) -> Any:
    """A SQLAlchemy engine on `url`, connected once to prove the server is there: StorageError in one line
    naming host and port (or the driver to install) when it is not, before any data is read."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(database_url(url))
    except sa.exc.ArgumentError:
        raise StorageError(
            f"--storage {url!r}: not a database URL; e.g. postgresql://USER:PASSWORD@HOST:5432/DB or "
            "sqlite:///sweep.db"
        ) from None
    sqlite = parsed.get_backend_name() == "sqlite"
    arguments = {"timeout": 60} if sqlite else {"connect_timeout": CONNECT_TIMEOUT}
    try:
        engine = sa.create_engine(parsed, connect_args=arguments, pool_pre_ping=True)
    except ModuleNotFoundError as e:
        raise StorageError(
            f"--storage {where(url)}: its driver {e.name!r} is not installed (pip install -e '.[cluster]' "
            "brings PostgreSQL's)"
        ) from None
    if sqlite:  # writers one at a time, each waiting its turn
        serialise_sqlite(engine)
    try:
        with engine.connect():
            pass
    except sa.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", e)).strip().splitlines()[0] if str(getattr(e, "orig", e)) else ""
        raise StorageError(
            f"--storage: cannot reach the database at {where(url)} ({reason}); check the host, port, user "
            "and password, and that the server runs"
        ) from None
    return engine


def serialise_sqlite(engine: Any) -> None:
    """Every transaction on `engine` (SQLite) takes the write lock when it begins (BEGIN IMMEDIATE), so that
    two workers' claims run one after the other instead of failing with 'database is locked'."""
    import sqlalchemy as sa

    @sa.event.listens_for(engine, "connect")
    def autocommit_driver(connection: Any, record: Any) -> None:
        connection.isolation_level = None  # the transactions are begun below, not by the driver

    @sa.event.listens_for(engine, "begin")
    def begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def differences(saved: Any, given: Any, path: str = "") -> list[str]:
    """What differs between two JSON values, as 'path: saved -> given' (dicts compared key by key)."""
    if isinstance(saved, dict) and isinstance(given, dict):
        return [
            d
            for key in sorted(set(saved) | set(given), key=str)
            for d in differences(saved.get(key), given.get(key), f"{path}.{key}" if path else str(key))
        ]
    return [] if saved == given else [f"{path}: {json.dumps(saved)} -> {json.dumps(given)}"]


def tables(metadata: Any) -> tuple[Any, Any]:
    """The two tables: the sweeps (name, definition, who wrote the tables) and their runs (a claim each)."""
    import sqlalchemy as sa

    sweeps = sa.Table(
        "cnn_sweeps",
        metadata,
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("definition", sa.Text, nullable=False),
        sa.Column("collected_by", sa.String(200)),
    )
    runs = sa.Table(
        "cnn_sweep_runs",
        metadata,
        sa.Column("sweep", sa.String(200), primary_key=True),
        sa.Column("key", sa.String(1000), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(200)),
        sa.Column("heartbeat", sa.Float),
        sa.Column("claims", sa.Integer, nullable=False),
        sa.Column("owners", sa.Text, nullable=False),  # every worker that held it, in order (JSON)
    )
    return sweeps, runs


class Queue:
    """The runs (`keys`) of sweep `name` in the database at `url`, seen by this worker (host:PID)."""

    def __init__(self, url: str, name: str, heartbeat: float = 10.0):
        import sqlalchemy as sa

        self.url, self.name, self.heartbeat = url, name, heartbeat
        self.engine = connect(url)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.sweeps, self.runs = tables(sa.MetaData())
        for attempt in range(3):  # two workers creating the tables at once: one wins, the other sees them
            try:
                self.sweeps.metadata.create_all(self.engine)
                break
            except sa.exc.SQLAlchemyError:
                if attempt == 2:
                    raise
                time.sleep(0.5)

    def define(self, definition: dict[str, Any], keys: list[str]) -> None:
        """Creates the sweep with its runs, or joins it: StorageError naming what differs when it was made
        with another `definition` (base, variants, seeds, data), before this worker trains anything."""
        import sqlalchemy as sa

        text = json.dumps(definition, sort_keys=True, default=str)
        try:
            with self.engine.begin() as db:
                db.execute(sa.insert(self.sweeps).values(name=self.name, definition=text))
                db.execute(
                    sa.insert(self.runs),
                    [
                        {"sweep": self.name, "key": k, "position": i, "state": WAITING, "claims": 0}
                        | {"owners": "[]"}
                        for i, k in enumerate(keys)
                    ],
                )
            return
        except sa.exc.IntegrityError:  # it is there: another worker (or an earlier run) made it
            pass
        with self.engine.connect() as db:
            saved = db.execute(sa.select(self.sweeps.c.definition).where(self.sweeps.c.name == self.name))
        changed = differences(json.loads(saved.scalar_one()), json.loads(text))
        if changed:
            raise StorageError(
                f"the sweep {self.name!r} in {where(self.url)} was started with another definition "
                f"({'; '.join(changed)[:600]}); start this worker with the same --grid, --base, --seeds, "
                "--together and data set, or give another --out folder name for a new sweep"
            )

    def claim(self) -> str | None:
        """The next run to train, claimed by this worker: a waiting one, or one whose worker fell silent
        (its heartbeat older than `STALE_BEATS` beats); None when there is none now."""
        import sqlalchemy as sa

        r = self.runs.c
        for _ in range(20):  # another worker claimed the one seen: look again
            stale = time.time() - STALE_BEATS * self.heartbeat
            with self.engine.begin() as db:
                found = db.execute(
                    sa.select(r.key, r.state, r.claims, r.owners)
                    .where(r.sweep == self.name)
                    .where((r.state == WAITING) | ((r.state == RUNNING) & (r.heartbeat < stale)))
                    .order_by(r.position)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if found is None:
                    return None
                owners = json.dumps([*json.loads(found.owners), self.worker])
                taken = db.execute(
                    sa.update(self.runs)
                    .where((r.sweep == self.name) & (r.key == found.key))
                    .where((r.state == found.state) & (r.claims == found.claims))
                    .values(state=RUNNING, owner=self.worker, heartbeat=time.time(), owners=owners)
                    .values(claims=found.claims + 1)
                )
                if taken.rowcount == 1:
                    return found.key
        return None

    def _mine(self, key: str, **values: Any) -> bool:
        """Sets `values` on run `key` if this worker still holds it; whether it did."""
        import sqlalchemy as sa

        r = self.runs.c
        with self.engine.begin() as db:
            done = db.execute(
                sa.update(self.runs)
                .where((r.sweep == self.name) & (r.key == key))
                .where((r.owner == self.worker) & (r.state == RUNNING))
                .values(**values)
            )
        return done.rowcount == 1

    def beat(self, key: str) -> bool:
        """This worker still trains run `key`; False when another worker took it over meanwhile."""
        return self._mine(key, heartbeat=time.time())

    def finish(self, key: str) -> bool:
        return self._mine(key, state=DONE)

    def release(self, key: str) -> bool:
        """Run `key` back to the queue (this worker stopped; its saved epochs are resumed by the next)."""
        return self._mine(key, state=WAITING, owner=None, heartbeat=None)

    @contextlib.contextmanager
    def holding(self, key: str) -> Iterator[None]:
        """Beats run `key`'s heartbeat every `heartbeat` seconds (a thread) while the block trains it."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat):
                with contextlib.suppress(Exception):  # a lost connection: the next beat tries again
                    if not self.beat(key):
                        print(f"[{self.worker}] another worker took over {key} (this one fell silent)")
                        return

        thread = threading.Thread(target=beat, daemon=True, name="cnn-queue-heartbeat")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def states(self) -> dict[str, dict[str, Any]]:
        """Every run: key -> its state, claims and the workers that held it."""
        import sqlalchemy as sa

        r = self.runs.c
        with self.engine.connect() as db:
            rows = db.execute(
                sa.select(r.key, r.state, r.claims, r.owners).where(r.sweep == self.name).order_by(r.position)
            )
            return {
                row.key: {"state": row.state, "claims": row.claims, "owners": json.loads(row.owners)}
                for row in rows
            }

    def claims(self) -> Iterator[str]:
        """The runs this worker trains, claimed one at a time, until every run of the sweep is done; while
        the only ones left are held by others, it waits (a heartbeat) and takes over a silent one's."""
        while True:
            key = self.claim()
            if key is not None:
                yield key
                continue
            if all(s["state"] == DONE for s in self.states().values()):
                return
            time.sleep(self.heartbeat)

    def take_collect(self) -> bool:
        """Whether this worker writes the sweep's tables: the first to ask once every run is done."""
        import sqlalchemy as sa

        s = self.sweeps.c
        with self.engine.begin() as db:
            taken = db.execute(
                sa.update(self.sweeps)
                .where((s.name == self.name) & s.collected_by.is_(None))
                .values(collected_by=self.worker)
            )
        return taken.rowcount == 1
