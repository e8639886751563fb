"""Loading a PostgreSQL target: ``COPY`` of the parts, the snapshot's build and swap, the
incremental's stage and merge (see :mod:`.postgres` for the whole picture).

:class:`PostgresLoader` is the loading half of :class:`~.postgres.PostgresDialect`; it relies
on the dialect's connection handling, quoting and DDL.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import closing
from typing import Any

from airflow_provider_instructure.replication.dialects.base import (
    NEW_SUFFIX,
    Dialect,
    LiveColumn,
    LoadCounts,
    LoadJob,
    Target,
)
from airflow_provider_instructure.replication.errors import ReplicationError, TsvFormatError
from airflow_provider_instructure.replication.locate import at_line, pg_copy_location
from airflow_provider_instructure.replication.tsv import (
    CHUNK_SIZE,
    META_ACTION,
    ChunkFile,
    Part,
    iter_body_chunks,
    prefetch,
)

STAGE = "dap_stage"


class PostgresLoader(Dialect):
    """The loading methods of the PostgreSQL dialect."""

    #: ``psycopg`` or ``psycopg2`` (set by the dialect).
    driver: str | None

    def _copy(self, cur: Any, sql: str, chunks: Iterable[bytes]) -> tuple[int, int]:
        """Run one ``COPY ... FROM STDIN``; returns (rows, bytes).

        The blocks are produced on a background thread (:func:`~..tsv.prefetch`): the client
        decompresses and cuts the next block while the server parses the previous one.
        """
        with closing(prefetch(chunks)) as blocks:
            if self.driver == "psycopg2":
                source = ChunkFile(blocks)
                try:
                    cur.copy_expert(sql, source, size=CHUNK_SIZE)
                except Exception:
                    # psycopg2 reports an error raised while reading the data as QueryCanceled
                    # ("error in .read() call"); the reader's own error says what is wrong.
                    if source.error is not None:
                        raise source.error from None
                    raise
                return cur.rowcount, source.count
            sent = 0
            with cur.copy(sql) as copy:
                for chunk in blocks:
                    copy.write(chunk)
                    sent += len(chunk)
            return cur.rowcount, sent

    def _copy_part(
        self, cur: Any, table_sql: str, part: Part, job: LoadJob, *, with_meta: bool, freeze: bool
    ) -> tuple[int, int]:
        fields = part.fields if with_meta else part.data_fields
        drop = 0 if with_meta else part.leading_meta
        cols = ", ".join(self.quote(f.name) for f in fields)
        # DAP files are UTF-8 whatever the session's client_encoding says.
        options = "FORMAT text, ENCODING 'UTF8'" + (", FREEZE" if freeze else "")
        fixer = job.chunk_fixer(part, self.timestamps)
        chunks = iter_body_chunks(part, drop_leading=drop, fix=fixer)
        try:
            return self._copy(cur, f"COPY {table_sql} ({cols}) FROM STDIN WITH ({options})", chunks)
        except Exception as exc:
            location = pg_copy_location(exc) if str(_sqlstate(exc) or "")[:2] in ("22", "23") else None
            if location is None:
                raise
            line, column = location
            raise at_line(job.where, part, fixer.file_line(line), column, str(exc).splitlines()[0]) from exc

    def _dedupe(self, cur: Any, table_sql: str, keys: list[str]) -> int:
        # Fresh tables and temp tables are filled in file order, so the larger ctid is the
        # later occurrence: keep it, as an upsert in file order would.
        cur.execute(
            f"DELETE FROM {table_sql} a USING {table_sql} b WHERE {self.key_match('a', 'b', keys)} AND a.ctid < b.ctid"
        )
        return cur.rowcount

    def snapshot(self, job: LoadJob) -> LoadCounts:
        t = job.target
        keys = job.key_names
        build = self.side_name(t.table, NEW_SUFFIX) if job.replace_live else t.table
        build_sql = self.qualify(t.schema, build)
        counts = LoadCounts(values=job.tally)
        with self.transaction(timer=job.timer) as cur:
            with job.timer.phase("prepare"):
                self.ensure_schema(cur, t)
                if job.replace_live:
                    cur.execute(f"DROP TABLE IF EXISTS {build_sql}")
                cur.execute(self.create_table_sql(t, build, job.schema.columns, job.column_types, primary_key=False))
            with job.timer.phase("load"):
                rows = 0
                for part in job.parts:
                    if part.meta_is_leading:
                        n, sent = self._copy_part(cur, build_sql, part, job, with_meta=False, freeze=True)
                    else:
                        n, sent = self._copy_through_stage(cur, build_sql, part, job)
                    rows += n
                    counts.bytes_loaded += sent
            with job.timer.phase("index"):
                if job.dedupe:
                    rows -= self._dedupe(cur, build_sql, keys)
                pkey = self.side_name(build, "_pkey")
                cur.execute(
                    f"ALTER TABLE {build_sql} ADD CONSTRAINT {self.quote(pkey)} "
                    f"PRIMARY KEY ({', '.join(self.quote(k) for k in keys)})"
                )
                cur.execute(f"ANALYZE {build_sql}")
            with job.timer.phase("swap"):
                if job.replace_live:
                    self._swap(cur, t, build, pkey)
                job.write_state(cur)
        counts.inserted = rows
        return counts

    def _copy_through_stage(self, cur: Any, build_sql: str, part: Part, job: LoadJob) -> tuple[int, int]:
        # Rare layout: a meta field between data fields cannot be cut off by prefix, so the
        # part goes through a temporary table that has every header field.
        stage = self.quote(STAGE + "_snapshot")
        defs = [f"{self.quote(f.name)} {'text' if f.is_meta else job.column_types[f.name]}" for f in part.fields]
        cur.execute(f"CREATE TEMP TABLE {stage} ({', '.join(defs)}) ON COMMIT DROP")
        n, sent = self._copy_part(cur, stage, part, job, with_meta=True, freeze=False)
        cols = ", ".join(self.quote(f.name) for f in part.data_fields)
        cur.execute(f"INSERT INTO {build_sql} ({cols}) SELECT {cols} FROM {stage}")
        cur.execute(f"DROP TABLE {stage}")
        return n, sent

    def _swap(self, cur: Any, t: Target, build: str, pkey: str) -> None:
        live_sql = self.qualified(t)
        grants = self.fetch_all(
            cur,
            "SELECT r.rolname, a.privilege_type, a.is_grantable FROM pg_class c "
            "CROSS JOIN LATERAL aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
            "WHERE c.oid = to_regclass(%s) AND a.grantee <> c.relowner",
            (live_sql,),
        )
        try:
            cur.execute(f"DROP TABLE {live_sql}")
        except Exception as exc:
            if _sqlstate(exc) == "2BP01":  # dependent_objects_still_exist
                detail = getattr(getattr(exc, "diag", None), "message_detail", None) or str(exc)
                raise ReplicationError(
                    f"cannot swap the new snapshot into {t.display}: other objects depend on it ({detail.strip()}). "
                    "Drop them before the snapshot and re-create them after; nothing was changed"
                ) from exc
            raise
        cur.execute(f"ALTER TABLE {self.qualify(t.schema, build)} RENAME TO {self.quote(t.table)}")
        cur.execute(
            f"ALTER INDEX {self.qualify(t.schema, pkey)} RENAME TO {self.quote(self.side_name(t.table, '_pkey'))}"
        )
        for role, privilege, grantable in grants:
            grantee = self.quote(role) if role else "PUBLIC"
            option = " WITH GRANT OPTION" if grantable and role else ""
            cur.execute(f"GRANT {privilege} ON {live_sql} TO {grantee}{option}")

    def incremental(self, job: LoadJob) -> LoadCounts:
        t = job.target
        keys = job.key_names
        live = job.live
        stage = self.quote(STAGE)
        fields = job.incoming_fields()  # staging column -> is meta
        data_cols = [name for name, meta in fields.items() if not meta]
        counts = LoadCounts(values=job.tally)
        with self.transaction(timer=job.timer) as cur:
            with job.timer.phase("prepare"):
                defs = []
                for name, meta in fields.items():
                    typ = "text" if meta else ("jsonb" if live[name].array_of else live[name].sql_type)
                    defs.append(f"{self.quote(name)} {typ}")
                if META_ACTION not in fields:
                    defs.append(f"{self.quote(META_ACTION)} text")
                cur.execute(f"CREATE TEMP TABLE {stage} ({', '.join(defs)}) ON COMMIT DROP")
            with job.timer.phase("load"):
                for part in job.parts:
                    _, sent = self._copy_part(cur, stage, part, job, with_meta=True, freeze=False)
                    counts.bytes_loaded += sent
                # Statistics of the key and action columns are all the merge's plans need;
                # a full ANALYZE of a wide stage costs as much as loading it.
                analyzed = ", ".join(self.quote(c) for c in [*keys, META_ACTION])
                cur.execute(f"ANALYZE {stage} ({analyzed})")
            with job.timer.phase("merge"):
                action = self.quote(META_ACTION)
                bad = self.fetch_one(
                    cur, f"SELECT count(*) FROM {stage} WHERE {action} IS NULL OR {action} NOT IN ('U', 'D')"
                )
                if bad and bad[0]:
                    raise TsvFormatError(f"{bad[0]} record(s) have a meta.action other than U or D")
                if job.dedupe:
                    self._dedupe(cur, stage, keys)
                live_sql = self.qualified(t)
                cur.execute(
                    f"DELETE FROM {live_sql} t USING {stage} s WHERE s.{action} = 'D' AND "
                    f"{self.key_match('t', 's', keys)}"
                )
                counts.deleted = cur.rowcount
                counts.inserted, counts.updated = self._upsert(cur, live_sql, stage, data_cols, keys, live)
                job.write_state(cur)
        return counts

    def _upsert(
        self, cur: Any, live_sql: str, stage: str, cols: list[str], keys: list[str], live: dict[str, LiveColumn]
    ) -> tuple[int, int]:
        q = self.quote
        exprs = []
        for name in cols:
            elem = live[name].array_of
            if elem:
                exprs.append(
                    f"CASE WHEN s.{q(name)} IS NULL THEN NULL ELSE "
                    f"ARRAY(SELECT jsonb_array_elements_text(s.{q(name)}))::{live[name].sql_type} END"
                )
            else:
                exprs.append(f"s.{q(name)}")
        non_keys = [c for c in cols if c not in keys]
        conflict = (
            f"DO UPDATE SET {', '.join(f'{q(c)} = EXCLUDED.{q(c)}' for c in non_keys)}" if non_keys else "DO NOTHING"
        )
        row = self.fetch_one(
            cur,
            f"WITH up AS (INSERT INTO {live_sql} ({', '.join(q(c) for c in cols)}) "
            f"SELECT {', '.join(exprs)} FROM {stage} s WHERE s.{q(META_ACTION)} = 'U' "
            f"ON CONFLICT ({', '.join(q(k) for k in keys)}) {conflict} RETURNING (xmax = 0) AS inserted) "
            "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up",
        )
        assert row is not None
        return int(row[0]), int(row[1])


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
