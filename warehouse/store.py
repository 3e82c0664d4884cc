"""Store = a directory with `catalog.duckdb` and one folder per artifact.

An artifact is the output of one stage recipe: its id derives from the recipe digest, so asking
again for a completed recipe costs nothing. Its data are tables made of parts (Parquet files,
shards). A part becomes visible only once its files are renamed into place *and* its catalog row
is committed, so a run killed at any point leaves nothing half-written visible."""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from clipstore.warehouse import catalog, fs
from clipstore.warehouse.errors import ClipstoreError, NotFoundError
from clipstore.warehouse.hashing import digest, file_sha256
from clipstore.warehouse.lock import writer_lock

CODE_VERSION = "0.1.0"
DEFAULT_STORE = "store"
_PART_FILE = re.compile(r"^\d{6}\.")  # part files are named by their zero-padded part number


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "unnamed"


def default_store_path() -> Path:
    return Path(os.environ.get("CLIPSTORE_STORE", DEFAULT_STORE))


@dataclass(frozen=True)
class Artifact:
    """A catalog row, read back."""

    artifact_id: str
    kind: str
    name: str
    recipe: dict
    recipe_digest: str
    status: str
    path: Path
    created_at: datetime
    updated_at: datetime
    counts: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    noop: bool = False     # set on the artifact a stage call returns: True when it was already up to date

    @property
    def inputs(self) -> list[str]:
        return list(self.recipe.get("inputs", []))

    @property
    def params(self) -> dict:
        return dict(self.recipe.get("params", {}))


_ARTIFACT_COLUMNS = ("artifact_id, kind, name, recipe, recipe_digest, status, path, created_at, "
                     "updated_at, counts, stats, tables")


class Store:
    def __init__(self, root: str | Path | None = None, create: bool = True):
        self.root = Path(root) if root is not None else default_store_path()
        self.catalog_path = self.root / "catalog.duckdb"
        if not self.catalog_path.exists():
            if not create:
                raise NotFoundError(f"no store at {self.root}",
                                    fix="pass --store DIR (or set CLIPSTORE_STORE) to an existing store, "
                                        "or ingest something first to create one")
            self.root.mkdir(parents=True, exist_ok=True)
            with writer_lock(self.root, wait=True, timeout=60):
                catalog.ensure_schema(self.catalog_path)

    # ---- reading ---------------------------------------------------------------------------
    def connect(self, read_only: bool = True):
        return catalog.connect(self.catalog_path, read_only=read_only)

    def _artifacts(self, where: str = "", params: list | None = None) -> list[Artifact]:
        with self.connect() as con:
            rows = con.execute(
                f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts {where} ORDER BY created_at, artifact_id",
                params or []).fetchall()
        return [self._artifact_from_row(r) for r in rows]

    def _artifact_from_row(self, r) -> Artifact:
        loads = lambda v: json.loads(v) if v else {}  # noqa: E731
        return Artifact(artifact_id=r[0], kind=r[1], name=r[2], recipe=loads(r[3]), recipe_digest=r[4],
                        status=r[5], path=self.root / r[6], created_at=r[7], updated_at=r[8],
                        counts=loads(r[9]), stats=loads(r[10]), tables=loads(r[11]))

    def list(self, kind: str | None = None) -> list[Artifact]:
        return self._artifacts("WHERE kind = ?", [kind]) if kind else self._artifacts()

    def get(self, ref: str, kind: str | None = None) -> Artifact:
        """An artifact by id, or the current artifact of that name (optionally of one kind)."""
        found = self._artifacts("WHERE artifact_id = ?", [ref])
        if found:
            return found[0]
        current = self.current(kind, ref) if kind else None
        if current is None and kind is None:
            named = [a for a in self.current_all() if a.name == ref]
            current = named[-1] if named else None
        if current is None:
            what = f"{kind} '{ref}'" if kind else f"artifact '{ref}'"
            raise NotFoundError(f"no {what} in the store", where=str(self.root),
                                fix="`clipstore ls` lists what the store holds")
        return current

    def current(self, kind: str, name: str) -> Artifact | None:
        """The artifact a name means now: the newest one of that kind and name with data."""
        for a in reversed(self._artifacts("WHERE kind = ? AND name = ? AND status <> 'failed'", [kind, name])):
            if a.status == "complete" or self.parts(a.artifact_id):
                return a
        return None

    def current_all(self, kind: str | None = None) -> list[Artifact]:
        """The current artifact of every (kind, name), in one catalog read."""
        where = "WHERE status <> 'failed' AND (status = 'complete' OR artifact_id IN (SELECT artifact_id FROM parts))"
        params: list = []
        if kind:
            where += " AND kind = ?"
            params.append(kind)
        seen: dict[tuple[str, str], Artifact] = {}
        for a in self._artifacts(where, params):  # ordered by creation: the newest wins
            seen[(a.kind, a.name)] = a
        return sorted(seen.values(), key=lambda a: (a.kind, a.name))

    def all_parts(self, artifact_ids: list[str]) -> dict[tuple[str, str], list[tuple[int, Path, str]]]:
        """(artifact, table) -> [(part, path, run_id)] for several artifacts in one catalog read."""
        if not artifact_ids:
            return {}
        with self.connect() as con:
            rows = con.execute("SELECT artifact_id, table_name, part, path, run_id FROM parts "
                               "WHERE artifact_id IN (SELECT unnest(?)) ORDER BY part", [artifact_ids]).fetchall()
        out: dict[tuple[str, str], list] = {}
        for aid, table, part, path, run in rows:
            out.setdefault((aid, table), []).append((part, self.root / path, run))
        return out

    def parts(self, artifact_id: str, table: str | None = None) -> list[tuple[int, str, Path]]:
        """Committed parts (part number, table, absolute path), in part order."""
        sql = "SELECT part, table_name, path FROM parts WHERE artifact_id = ?"
        params: list = [artifact_id]
        if table:
            sql += " AND table_name = ?"
            params.append(table)
        with self.connect() as con:
            rows = con.execute(sql + " ORDER BY part, table_name", params).fetchall()
        return [(p, t, self.root / path) for p, t, path in rows]

    def part_rows(self, artifact_id: str, table: str) -> list[tuple[Path, int]]:
        with self.connect() as con:
            rows = con.execute("SELECT path, rows FROM parts WHERE artifact_id = ? AND table_name = ? ORDER BY part",
                               [artifact_id, table]).fetchall()
        return [(self.root / p, n) for p, n in rows]

    def table_paths(self, artifact: Artifact | str, table: str) -> list[Path]:
        aid = artifact.artifact_id if isinstance(artifact, Artifact) else artifact
        return [p for _, _, p in self.parts(aid, table)]

    def versions(self, artifact_ids: list[str]) -> dict[str, str]:
        """artifact id -> digest of its committed parts. Parts are immutable and new data arrives
        as new parts, so a recipe that lists its inputs' versions changes exactly when they do."""
        with self.connect() as con:
            return {aid: digest(con.execute(
                "SELECT part, table_name, sha256 FROM parts WHERE artifact_id = ? ORDER BY part, table_name",
                [aid]).fetchall()) for aid in artifact_ids}

    def lineage(self, artifact_id: str) -> list[tuple[str, str]]:
        with self.connect() as con:
            return con.execute("SELECT input_id, role FROM lineage WHERE artifact_id = ? ORDER BY role, input_id",
                               [artifact_id]).fetchall()

    # ---- writing ---------------------------------------------------------------------------
    @contextmanager
    def writing(self, wait: bool = False, timeout: float | None = None):
        with writer_lock(self.root, wait=wait, timeout=timeout):
            yield self

    def begin(self, *, kind: str, name: str, stage: str, params: dict, inputs: list[str] | None = None,
              tables: dict | None = None, config: dict | None = None) -> "ArtifactBuilder":
        """Start (or resume) the artifact of this recipe. Call inside `writing()`."""
        recipe = {"kind": kind, "name": name, "stage": stage, "params": params,
                  "inputs": sorted(inputs or []), "code_version": CODE_VERSION}
        return ArtifactBuilder(self, recipe, tables or {}, config or {})


class ArtifactBuilder:
    """Writes one artifact's parts. Orphans from a killed run are swept on start."""

    def __init__(self, store: Store, recipe: dict, tables: dict, config: dict):
        self.store = store
        self.recipe = recipe
        self.recipe_digest = digest(recipe)
        self.kind, self.name = recipe["kind"], recipe["name"]
        self.artifact_id = f"{self.kind}-{_slug(self.name)}-{self.recipe_digest[:12]}"
        self.rel_path = Path("artifacts") / self.artifact_id
        self.path = store.root / self.rel_path
        self.run_id = uuid.uuid4().hex[:16]
        self.started = time.monotonic()
        self.tmp_root = store.root / "tmp" / self.run_id
        self.parts_committed = 0
        now = _now()
        with store.connect(read_only=False) as con:
            row = con.execute("SELECT status FROM artifacts WHERE artifact_id = ?", [self.artifact_id]).fetchone()
            self.previous_status = row[0] if row else None
            if row is None:
                con.execute(
                    "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, 'building', ?, ?, ?, ?, NULL, NULL, ?)",
                    [self.artifact_id, self.kind, self.name, self.recipe_digest, json.dumps(recipe),
                     str(self.rel_path), CODE_VERSION, now, now, json.dumps(tables)])
                for input_id in recipe["inputs"]:
                    con.execute("INSERT INTO lineage VALUES (?, ?, 'input')", [self.artifact_id, input_id])
            con.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, 'running', ?, NULL, NULL)",
                        [self.run_id, self.artifact_id, recipe["stage"], " ".join(sys.argv)[:2000],
                         getpass.getuser(), socket.gethostname(), now, json.dumps(config, default=str)])
        self._sweep_orphans()

    @property
    def complete(self) -> bool:
        return self.previous_status == "complete"

    def reuse_if_complete(self) -> Artifact | None:
        """The finished artifact when this exact recipe already completed: the run is recorded
        as a no-op and nothing is recomputed. None when there is work to do."""
        if not self.complete:
            return None
        done = self.store.get(self.artifact_id)
        return self.finish(done.counts, done.stats, summary={"reused": True}, noop=True)

    def _sweep_orphans(self) -> None:
        """Delete files a killed run renamed into place but never committed, and stale temp dirs."""
        committed = {p for _, _, p in self.store.parts(self.artifact_id)}
        if self.path.exists():
            for f in self.path.rglob("*"):
                if f.is_file() and f not in committed and _PART_FILE.match(f.name):
                    fs.remove(f)
        tmp = self.store.root / "tmp"
        if tmp.exists():
            for d in tmp.iterdir():
                if d.name != self.run_id:
                    fs.remove(d)  # we hold the writer lock: no other run is using them

    def add_lineage(self, input_ids: list[str], role: str = "source") -> None:
        """Record inputs that are not part of the recipe: the source of an artifact that grows with
        it (ingest, embed), whose every version it has read."""
        with self.store.connect(read_only=False) as con:
            known = {r[0] for r in con.execute("SELECT input_id FROM lineage WHERE artifact_id = ? AND role = ?",
                                               [self.artifact_id, role]).fetchall()}
            for input_id in sorted(set(input_ids) - known):
                con.execute("INSERT INTO lineage VALUES (?, ?, ?)", [self.artifact_id, input_id, role])

    def committed_parts(self, table: str | None = None) -> list[tuple[int, str, Path]]:
        return self.store.parts(self.artifact_id, table)

    def next_part(self) -> int:
        parts = self.committed_parts()
        return max((p for p, _, _ in parts), default=-1) + 1

    def temp_dir(self, name: str) -> Path:
        d = self.tmp_root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def commit_part(self, part: int, files: dict[str, tuple[Path, int]]) -> None:
        """Publish a part: files maps table name -> (temp file, row count). Renames first, then
        one catalog transaction; until that transaction commits, the part does not exist."""
        published = []
        for table, (tmp_file, rows) in sorted(files.items()):
            final = self.path / table / f"{part:06d}{tmp_file.suffix}"
            sha = file_sha256(tmp_file)
            fs.publish(tmp_file, final)
            published.append([self.artifact_id, part, table, str(final.relative_to(self.store.root)), rows,
                              sha, self.run_id, _now()])
        with self.store.connect(read_only=False) as con:
            con.execute("BEGIN")
            con.executemany("INSERT INTO parts VALUES (?, ?, ?, ?, ?, ?, ?, ?)", published)
            con.execute("UPDATE artifacts SET updated_at = ? WHERE artifact_id = ?", [_now(), self.artifact_id])
            con.execute("COMMIT")
        self.parts_committed += 1

    def write_file(self, relpath: str, data: bytes | str) -> Path:
        """Atomically (re)write a small artifact-level file such as stats.json or sizes.json."""
        path = self.path / relpath
        fs.atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
        return path

    def finish(self, counts: dict, stats: dict | None = None, summary: dict | None = None,
               noop: bool = False) -> Artifact:
        manifest = {"artifact_id": self.artifact_id, "recipe": self.recipe, "recipe_digest": self.recipe_digest,
                    "counts": counts, "stats": stats or {},
                    "parts": [{"part": p, "table": t, "path": str(path.relative_to(self.path))}
                              for p, t, path in self.committed_parts()]}
        self.write_file("manifest.json", json.dumps(manifest, indent=1, sort_keys=True, default=str))
        now = _now()
        with self.store.connect(read_only=False) as con:
            con.execute("BEGIN")
            con.execute("UPDATE artifacts SET status = 'complete', updated_at = ?, counts = ?, stats = ? "
                        "WHERE artifact_id = ?", [now, json.dumps(counts), json.dumps(stats or {}, default=str),
                                                  self.artifact_id])
            self._close_run(con, "noop" if noop else "done", summary or counts, None)
            con.execute("COMMIT")
        fs.remove(self.tmp_root)
        return replace(self.store.get(self.artifact_id), noop=noop)

    def fail(self, error: BaseException) -> None:
        fs.remove(self.tmp_root)   # first: on a full disk this frees the space the catalog write needs
        with self.store.connect(read_only=False) as con:
            self._close_run(con, "failed", None, f"{type(error).__name__}: {error}"[:4000])

    def _close_run(self, con, status: str, summary: dict | None, error: str | None) -> None:
        con.execute("UPDATE runs SET finished_at = ?, duration_s = ?, status = ?, summary = ?, error = ? "
                    "WHERE run_id = ?", [_now(), time.monotonic() - self.started, status,
                                         json.dumps(summary, default=str) if summary is not None else None,
                                         error, self.run_id])

    @contextmanager
    def failing_on_error(self):
        """Record a failed run if the block raises; re-raise."""
        try:
            yield self
        except BaseException as exc:  # KeyboardInterrupt too: the run row must say it stopped
            try:
                self.fail(exc)
            except Exception:
                pass
            raise


def require(condition: bool, message: str, **kw) -> None:
    if not condition:
        raise ClipstoreError(message, **kw)
