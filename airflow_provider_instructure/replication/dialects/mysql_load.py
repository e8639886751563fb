"""Loading MySQL/MariaDB: ``LOAD DATA LOCAL INFILE`` of each DAP part (the file MySQL reads,
the statement, the path literal, the errors) and :class:`MySQLLoader`, the snapshot and
incremental methods of :class:`~.mysql.MySQLDialect`.

* The file: MySQL reads ``\\f``/``\\v`` as ``f``/``v``, so gzip parts and parts with these
  escapes are written to a temporary file with the raw bytes (:func:`~..tsv.mysql_transcode`);
  the bad-value policy (:class:`~..values.ChunkFixer`) rewrites the few lines that need it
  on the way. A plain part that needs neither is loaded as it is.
* The path is written into the statement as a literal, never bound as a parameter:
  mysql-connector-python checks the file the server asks for against the literal it finds in
  the statement text *without unescaping it* (``mysql.connector._scripting
  .get_local_infile_filenames``), so a bound path with a backslash or a quote, which the
  driver escapes, never matches and the load fails. The literal is therefore delimited by a
  quote the path does not contain, and a path with a backslash is loaded with
  ``NO_BACKSLASH_ESCAPES`` set for that one statement, so that the server reads the same
  characters the driver checks. A path with both quote characters is copied to a plain name.
* Errors: a driver that fails inside the ``LOCAL INFILE`` exchange leaves the connection
  unusable, and every later statement then fails with "MySQL Connection not available". The
  load error is raised as :class:`~..errors.DataLoadError` with the driver's own message and
  the file's name, before anything else touches the connection; values the server refused
  become :class:`~..errors.BadValueError` with the part, line, column, key and value.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from airflow_provider_instructure.replication.dialects.base import (
    NEW_SUFFIX,
    OLD_SUFFIX,
    Dialect,
    LiveColumn,
    LoadCounts,
    LoadJob,
    Target,
)
from airflow_provider_instructure.replication.errors import DataLoadError, ReplicationConfigError
from airflow_provider_instructure.replication.locate import at_line, first_match, invalid_json
from airflow_provider_instructure.replication.tsv import (
    META_ACTION,
    Part,
    iter_body_chunks,
    mysql_transcode,
    needs_mysql_transcode,
    open_part,
)
from airflow_provider_instructure.replication.values import ChunkFixer, ValueTally

STAGE = "dap_stage"
LOCAL_INFILE_ERRORS = {1148, 2068, 3948, 3950}
_ROW_WARNING = re.compile(r"column `(?:[^`]|``)*`\.`(?:[^`]|``)*`\.`((?:[^`]|``)*)` at row (\d+)")
_CONSTRAINT = re.compile(r"CONSTRAINT `(?:[^`.]*\.)?((?:[^`]|``)*)` failed")
_QUOTED_VALUE = re.compile(r"value: '((?:[^']|'')*)'")


def errno_of(exc: BaseException) -> int | None:
    number = getattr(exc, "errno", None)
    if isinstance(number, int):
        return number
    if exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def infile_literal(path: Path) -> tuple[str, bool] | None:
    """``(SQL literal of path, needs NO_BACKSLASH_ESCAPES)``, or ``None`` if no literal can be
    read alike by the server and by mysql-connector (the path holds both quote characters)."""
    text = str(path)
    quote = "'" if "'" not in text else '"' if '"' not in text else None
    if quote is None:
        return None
    return f"{quote}{text}{quote}", "\\" in text


def load_sql(dialect: MySQLLoader, table_sql: str, part: Part, *, staging: bool, live: dict[str, LiveColumn]) -> str:
    """The ``LOAD DATA`` statement for ``part``, with ``{path}`` where the file literal goes."""
    q = dialect.quote
    targets: list[str] = []
    sets: list[str] = []
    for i, f in enumerate(part.fields):
        if f.column is None:
            targets.append(q(META_ACTION) if staging and f.label == META_ACTION else "@dummy")
            continue
        kind = f.column.type.kind
        var = f"@v{i}"
        binary = f.name in live and live[f.name].sql_type.lower() == "binary(16)"
        if binary and kind in ("uuid", "ip"):
            # dap initdb stores UUIDs and IP addresses as 16 raw bytes on MySQL.
            targets.append(var)
            convert = f"UNHEX(REPLACE({var}, '-', ''))" if kind == "uuid" else f"INET6_ATON({var})"
            sets.append(f"{q(f.name)} = {convert}")
        elif kind == "boolean":
            targets.append(var)
            cases = f"WHEN 'true' THEN 1 WHEN 'false' THEN 0 ELSE CAST({var} AS SIGNED)"
            sets.append(f"{q(f.name)} = CASE {var} {cases} END")
        elif kind == "timestamp":
            targets.append(var)
            sets.append(f"{q(f.name)} = CAST(REPLACE(REPLACE({var}, 'T', ' '), 'Z', '') AS DATETIME(6))")
        else:
            targets.append(q(f.name))
    # {path} is filled in with str.replace, not format: the rest may contain braces.
    sql = (
        f"LOAD DATA LOCAL INFILE {{path}} REPLACE INTO TABLE {table_sql} CHARACTER SET utf8mb4 "
        "FIELDS TERMINATED BY X'09' ESCAPED BY X'5C' LINES TERMINATED BY X'0A' IGNORE 1 LINES "
        f"({', '.join(targets)})"
    )
    if sets:
        sql += f" SET {', '.join(sets)}"
    return sql


def _temp_file(source: Path) -> tuple[int, str]:
    # Next to the download first (it was sized for the data), else the temp directory.
    try:
        return tempfile.mkstemp(prefix=f".{source.name}.", suffix=".mysql.tsv", dir=source.parent)
    except OSError:
        return tempfile.mkstemp(prefix=f"{source.name}.", suffix=".mysql.tsv")


def _needs_rewrite(part: Part, job: LoadJob, fixer: ChunkFixer, scratch: ValueTally) -> bool:
    if part.compressed or needs_mysql_transcode(part.path):
        return True
    probe = job.chunk_fixer(part, fixer.fields.range, tally=scratch)
    return any(probe(chunk) is not chunk for chunk in iter_body_chunks(part))


@contextlib.contextmanager
def loadable_file(part: Part, job: LoadJob, fixer: ChunkFixer) -> Iterator[tuple[Path, int]]:
    """A plain file MySQL reads as DAP meant it: the part itself when it needs nothing, else
    a temporary copy, transcoded and with the bad values fixed. Yields ``(path, bytes)``."""
    scratch = ValueTally()
    if not _needs_rewrite(part, job, fixer, scratch):
        job.tally.merge(scratch)  # placeholders in text columns, counted by the probe
        yield part.path, part.size
        return
    fd, name = _temp_file(part.path)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            with open_part(part.path) as src:
                header = src.readline()
            out.write(header)
            written += len(header)
            for chunk in iter_body_chunks(part, fix=fixer):
                chunk = mysql_transcode(chunk)
                out.write(chunk)
                written += len(chunk)
        yield Path(name), written
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


@contextlib.contextmanager
def _plain_name(path: Path) -> Iterator[Path]:
    """``path``, or a copy under a name any literal can hold (both quote characters in it)."""
    if infile_literal(path) is not None:
        yield path
        return
    fd, name = tempfile.mkstemp(suffix=".mysql.tsv")
    os.close(fd)
    try:
        shutil.copyfile(path, name)
        yield Path(name)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def load_part(dialect: MySQLLoader, cur: Any, table_sql: str, part: Part, job: LoadJob, *, staging: bool) -> int:
    """Load one part into ``table_sql``; returns the bytes the server read.

    :raises ReplicationConfigError: ``LOCAL INFILE`` is refused by the server or the driver.
    :raises BadValueError: the server refused a value (located in the part).
    :raises DataLoadError: any other load failure, with the driver's message.
    """
    fixer = job.chunk_fixer(part, dialect.timestamps)
    sql = load_sql(dialect, table_sql, part, staging=staging, live=job.live if staging else {})
    with loadable_file(part, job, fixer) as (path, size), _plain_name(path) as readable:
        literal, no_backslash_escapes = infile_literal(readable)  # type: ignore[misc]
        statement = sql.replace("{path}", literal, 1)
        try:
            if no_backslash_escapes:
                cur.execute("SET @dap_sql_mode = @@SESSION.sql_mode")
                cur.execute(
                    "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'NO_BACKSLASH_ESCAPES')"
                )
            try:
                cur.execute(statement)  # no parameters: the literal is final (see the module docstring)
            finally:
                if no_backslash_escapes:
                    with contextlib.suppress(Exception):  # a broken connection: the load's error matters
                        cur.execute("SET SESSION sql_mode = @dap_sql_mode")
        except Exception as exc:
            error = _load_error(exc, part, job, fixer, readable)
            number = errno_of(exc)
            if number is None or number < 1000 or 2000 <= number < 3000:  # client-side (-1: no server errno)
                # A client-side failure inside the LOCAL INFILE exchange leaves the protocol out of step:
                # the next statement (even the ping behind cursor()) waits for the read timeout. Close the
                # socket instead; the server rolls the transaction back and drops the lock with it.
                _drop(dialect.conn)
            raise error from exc
        warnings = [w for w in dialect.fetch_all(cur, "SHOW WARNINGS LIMIT 5") if str(w[0]) != "Note"]
    if warnings:
        raise _warning_error(warnings, part, job, fixer, table_sql)
    return size


def _drop(conn: Any) -> None:
    for close in ("shutdown", "close"):  # mysql-connector: shutdown() closes without a COM_QUIT round trip
        method = getattr(conn, close, None)
        if method is not None:
            with contextlib.suppress(Exception):
                method()
            return


def _load_error(exc: BaseException, part: Part, job: LoadJob, fixer: ChunkFixer, path: Path) -> Exception:
    number = errno_of(exc)
    if number in LOCAL_INFILE_ERRORS:
        return ReplicationConfigError(
            f"LOAD DATA LOCAL INFILE was refused ({exc}); enable local_infile on the server and open the "
            "connection with allow_local_infile=True (MySqlHook(local_infile=True))"
        )
    message = str(exc)
    # Strict mode turns some conversion warnings into errors: they are located alike.
    located = _locate(message, part, job, fixer)
    if located is not None:
        return located
    return DataLoadError(
        f"{job.where}: LOAD DATA LOCAL INFILE of {part.path.name} (read from {path}) failed: "
        f"{type(exc).__name__}: {message}"
    )


def _warning_error(
    warnings: list[tuple[Any, ...]], part: Part, job: LoadJob, fixer: ChunkFixer, table_sql: str
) -> Exception:
    shown = "; ".join(f"{w[0]} {w[1]}: {w[2]}" for w in warnings)
    for _, _, text in warnings:
        located = _locate(str(text), part, job, fixer)
        if located is not None:
            return located
    return DataLoadError(f"{part.path.name}: MySQL reported problems loading {table_sql}: {shown}")


def _locate(text: str, part: Part, job: LoadJob, fixer: ChunkFixer) -> Exception | None:
    """A :class:`BadValueError` for a server message that names a row, a constraint or a value."""
    row = _ROW_WARNING.search(text)
    if row is not None:
        column = row.group(1).replace("``", "`")
        return at_line(job.where, part, fixer.file_line(int(row.group(2))), column, text)
    constraint = _CONSTRAINT.search(text)
    if constraint is not None:
        column = constraint.group(1).replace("``", "`")
        located = first_match(job.where, part, [column], invalid_json, text)
        if located is not None:
            return located
    value = _QUOTED_VALUE.search(text)
    if value is not None:
        wanted = value.group(1).replace("''", "'")
        columns = [f.name for f in part.data_fields]
        return first_match(job.where, part, columns, lambda v: v == wanted, text)
    return None


class MySQLLoader(Dialect):
    """The loading half of :class:`~.mysql.MySQLDialect`: snapshot build, deferred swap,
    incremental stage and merge (the atomicity notes are in :mod:`.mysql`)."""

    def _ddl(self, cur: Any, sql: str) -> None:
        self.log.debug("%s", sql)
        cur.execute(sql)
        self.conn.commit()  # DDL committed implicitly; leave no transaction open behind it

    def _quietly(self, step: Callable[[Any], None], what: str) -> None:
        """Run a clean-up step that must not hide the error being raised: a load that failed
        inside the LOCAL INFILE exchange leaves the connection unusable, and every statement
        after it (even opening a cursor) fails with "MySQL Connection not available"."""
        cur = None
        try:
            cur = self.cursor()
            step(cur)
        except Exception:  # a broken connection releases its locks and temporary tables by itself
            self.log.debug("%s", what, exc_info=True)
        finally:
            if cur is not None:
                with contextlib.suppress(Exception):
                    cur.close()

    def _load_part(self, cur: Any, table_sql: str, part: Part, job: LoadJob, *, staging: bool) -> int:
        return load_part(self, cur, table_sql, part, job, staging=staging)

    def snapshot(self, job: LoadJob) -> LoadCounts:
        t = job.target
        build = self.side_name(t.table, NEW_SUFFIX)
        build_sql = self.qualify(t.schema, build)
        counts = LoadCounts(values=job.tally)
        cur = self.cursor()
        try:
            with job.timer.phase("prepare"):
                self._ddl(cur, f"DROP TABLE IF EXISTS {build_sql}")
                self._ddl(cur, self.create_table_sql(t, build, job.schema.columns, job.column_types))
            with job.timer.phase("load"):
                # Nobody reads the side table, so its loads need no enclosing transaction; a
                # crash leaves a stray table the next snapshot drops.
                for part in job.parts:
                    counts.bytes_loaded += self._load_part(cur, build_sql, part, job, staging=False)
                    self.conn.commit()
                row = self.fetch_one(cur, f"SELECT COUNT(*) FROM {build_sql}")
                self.conn.commit()
                counts.inserted = int(row[0]) if row else 0
        finally:
            with contextlib.suppress(Exception):  # a dead connection must not hide the load's error
                cur.close()
        with job.timer.phase("swap"), self.transaction(timer=job.timer) as tx:
            job.write_state(tx, pending_swap=build)
        return counts

    def swap_in(self, target: Target, build: str) -> bool:
        """Rename a loaded side table over the live one (idempotent). Returns True if renamed."""
        old = self.side_name(target.table, OLD_SUFFIX)
        cur = self.cursor()
        try:
            if self.table_kind(cur, target.schema, build) is None:
                self._ddl(cur, f"DROP TABLE IF EXISTS {self.qualify(target.schema, old)}")
                return False
            self._ddl(cur, f"DROP TABLE IF EXISTS {self.qualify(target.schema, old)}")
            live_sql = self.qualified(target)
            if self.table_kind(cur, target.schema, target.table) == "table":
                self._ddl(
                    cur,
                    f"RENAME TABLE {live_sql} TO {self.qualify(target.schema, old)}, "
                    f"{self.qualify(target.schema, build)} TO {live_sql}",
                )
                self._ddl(cur, f"DROP TABLE IF EXISTS {self.qualify(target.schema, old)}")
            else:
                self._ddl(cur, f"RENAME TABLE {self.qualify(target.schema, build)} TO {live_sql}")
            return True
        finally:
            cur.close()

    def incremental(self, job: LoadJob) -> LoadCounts:
        t = job.target
        keys = job.key_names
        live = job.live
        q = self.quote
        stage = q(STAGE)
        data_cols = job.data_columns()
        counts = LoadCounts(values=job.tally)
        live_sql = self.qualified(t)
        action = q(META_ACTION)
        match = self.key_match("t", "s", keys)
        try:
            with self.transaction(timer=job.timer) as cur:
                with job.timer.phase("prepare"):
                    cur.execute(f"DROP TEMPORARY TABLE IF EXISTS {stage}")
                    defs = [f"{action} CHAR(1) NULL"]
                    defs += [f"{q(name)} {live[name].sql_type} NULL" for name in data_cols if name not in keys]
                    defs += [f"{q(name)} {live[name].sql_type} NOT NULL" for name in keys]
                    defs.append(f"PRIMARY KEY ({', '.join(q(k) for k in keys)})")
                    # Temporary tables do not commit implicitly, so this stays in the transaction.
                    cur.execute(
                        f"CREATE TEMPORARY TABLE {stage} ({', '.join(defs)}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
                    )
                with job.timer.phase("load"):
                    for part in job.parts:
                        counts.bytes_loaded += self._load_part(cur, stage, part, job, staging=True)
                with job.timer.phase("merge"):
                    upserts, present = self.staged_upserts(cur, stage, live_sql, keys)
                    cur.execute(f"DELETE t FROM {live_sql} t JOIN {stage} s ON {match} WHERE s.{action} = 'D'")
                    counts.deleted = cur.rowcount
                    cols = ", ".join(q(c) for c in data_cols)
                    non_keys = [c for c in data_cols if c not in keys]
                    updates = ", ".join(f"{q(c)} = VALUES({q(c)})" for c in non_keys) or f"{q(keys[0])} = {q(keys[0])}"
                    cur.execute(
                        f"INSERT INTO {live_sql} ({cols}) SELECT {cols} FROM {stage} WHERE {action} = 'U' "
                        f"ON DUPLICATE KEY UPDATE {updates}"
                    )
                    counts.updated = present
                    counts.inserted = upserts - present
                    job.write_state(cur)
        finally:
            # The session may be gone (and its temporary table with it).
            self._quietly(lambda cur: self._ddl(cur, f"DROP TEMPORARY TABLE IF EXISTS {stage}"), "no stage dropped")
        return counts
