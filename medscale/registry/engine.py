"""Opening the registry: the URL (default, redacted for logs), the SQLAlchemy engine and the schema migrations.

SQLite runs in WAL mode with a busy timeout and takes its write lock at BEGIN (a deferred transaction that later
writes can fail with "database is locked" without waiting); its file is private, as it stores every resolved recipe.
"""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url

from medscale import medscale_home, settings
from medscale.errors import UserError
from medscale.paths import create_private

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 0x6D656473  # any constant: serializes concurrent first-time migrations on PostgreSQL


class RegistryError(UserError):
    """The registry cannot answer (unreachable, newer schema, unknown job); the message says which."""


def default_url() -> str:
    return settings.REGISTRY_URL.get() or f"sqlite:///{medscale_home() / 'registry.db'}"


def redact(url: str) -> str:
    """The URL as it may be logged: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: say nothing of it rather than risk printing a secret
        return "<unparseable registry URL>"


def scrub(text: str, url: str) -> str:
    """Drivers sometimes echo the connection string; never let its password through."""
    try:
        pw = make_url(url).password
    except Exception:
        return "(detail withheld)"
    return text.replace(pw, "***") if pw else text


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other backends and in-memory databases)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database).expanduser()


def _sqlite_engine(url) -> Engine:
    path = url.database
    if path and path != ":memory:":
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        create_private(Path(path).expanduser())  # it stores every resolved recipe, as private as recipe.resolved.yaml
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # pysqlite must not open transactions itself; BEGIN below does
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=60000")  # before WAL: switching the journal mode needs the lock
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_engine(url: str, connect_timeout: float = 5) -> Engine:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return _sqlite_engine(u)
    args = {"connect_timeout": int(connect_timeout)} if u.get_backend_name() == "postgresql" else {}
    return create_engine(u, pool_pre_ping=True, connect_args=args)


def _head_revision() -> str:
    """The newest migration, read from the revision files' headers (alembic itself is imported only to migrate)."""
    revs, downs = set(), set()
    for f in (MIGRATIONS / "versions").glob("*.py"):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.startswith("revision = "):
                revs.add(line.split("=", 1)[1].strip().strip("\"'"))
            elif line.startswith("down_revision = "):
                downs.add(line.split("=", 1)[1].strip().strip("\"'"))
    (head,) = revs - downs
    return head


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision, once, under a lock; refuse a schema newer than this code.
    A registry already at head (every run but the first) never imports alembic, so commands start fast."""
    from sqlalchemy import inspect, text

    head = _head_revision()
    with engine.connect() as conn:
        if inspect(conn).has_table("alembic_version"):
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            if current == head:
                return
    import logging

    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per revision is noise in a training log
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(cfg)
    with engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE already serializes writers
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
        current = MigrationContext.configure(conn).get_current_revision()
        if current == head:
            return
        known = {rev.revision for rev in script.walk_revisions()}
        if current is not None and current not in known:
            raise RegistryError(f"the registry's schema revision {current} is newer than this medscale knows "
                                f"(head {head}): upgrade medscale")
        from alembic import command

        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
