"""Store = a directory with `catalog.duckdb` and one folder per artifact.

An artifact is the output of one stage recipe (stage, stage version, parameters, pinned input
versions): its id derives from the recipe digest, so asking again for a completed recipe costs
nothing. Its data are tables made of parts (Parquet files, shards). A run commits parts one by
one (files renamed into place, then a catalog row), but readers see them only when the run
finishes: finishing publishes every pending part and moves the name's version pointer in one
catalog transaction. So a run killed at any point leaves the previous complete version in view,
and the next run of the same recipe resumes from the parts already committed.
See docs/store.md."""

from __future__ import annotations

import getpass
import subprocess
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
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.hashing import digest, file_sha256
from clipstore.warehouse.lock import writer_alive, writer_lock

PACKAGE_VERSION = "0.1.0"     # recorded per artifact; what invalidates outputs is each stage's version
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
        """Ids of the input artifacts whose versions the recipe pins."""
        return [i[0] if isinstance(i, list) else i for i in self.recipe.get("inputs", [])]

    @property
    def params(self) -> dict:
        return dict(self.recipe.get("params", {}))


_ARTIFACT_COLUMNS = ("artifact_id, kind, name, recipe, recipe_digest, status, path, created_at, "
                     "updated_at, counts, stats, tables")
_VISIBLE = "published AND NOT retired"     # parts readers see
_LIVE = "NOT retired"                      # parts a builder resumes from (published or pending)


@dataclass(frozen=True)
class Version:
    """One version of a name, as `clipstore versions NAME` lists it."""

    artifact: Artifact
    current: bool
    state: str                     # complete | incomplete (a run stopped before finishing) | building
    pending_parts: int             # parts committed by a run that has not finished


def git_revision() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout this code runs from; (None, None) outside one."""
    global _GIT
    if _GIT is None:
        here = Path(__file__).resolve().parent
        try:
            rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                 timeout=5)
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=10)
            _GIT = (rev.stdout.strip(), bool(dirty.stdout.strip())) if rev.returncode == 0 else (None, None)
        except (OSError, subprocess.SubprocessError):
            _GIT = (None, None)
    return _GIT


_GIT: tuple | None = None


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
        elif not catalog.is_current_schema(self.catalog_path):
            with writer_lock(self.root, wait=True, timeout=60):   # a store from an older clipstore
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
        """An artifact by id, or the current version of a name; `KIND:NAME` names the kind inline.
        With `kind`, an id of another kind is an error; a bare name that several kinds use is
        ambiguous and raises an error listing them."""
        if kind is None and ":" in ref and not self._artifacts("WHERE artifact_id = ?", [ref]):
            kind, ref = ref.split(":", 1)
        found = self._artifacts("WHERE artifact_id = ?", [ref])
        if found:
            if kind is not None and found[0].kind != kind:
                raise InputError(f"{ref} is a {found[0].kind} artifact, not {kind}",
                                 fix=f"pass the id or name of a {kind} artifact (`clipstore ls --kind {kind}`)")
            return found[0]
        if kind is not None:
            current = self.current(kind, ref)
        else:
            named = [a for a in self.current_all() if a.name == ref]
            if len(named) > 1:
                kinds = ", ".join(f"{a.kind}:{ref}" for a in named)
                raise InputError(f"the name {ref!r} is used by {len(named)} kinds of artifact",
                                 where=str(self.root), fix=f"say which one: {kinds}")
            current = named[0] if named else None
        if current is None:
            what = f"{kind} '{ref}'" if kind else f"artifact '{ref}'"
            raise NotFoundError(f"no {what} in the store", where=str(self.root),
                                fix="`clipstore ls` lists what the store holds")
        return current

    def current(self, kind: str, name: str) -> Artifact | None:
        """The version a name means now: the one its pointer names (moved only by a finished run
        or `clipstore versions NAME --use ID`)."""
        found = self._artifacts("WHERE artifact_id = (SELECT artifact_id FROM current_versions "
                                "WHERE kind = ? AND name = ?)", [kind, name])
        return found[0] if found else None

    def current_all(self, kind: str | None = None) -> list[Artifact]:
        """The current version of every (kind, name), in one catalog read."""
        where = "WHERE artifact_id IN (SELECT artifact_id FROM current_versions)"
        params: list = []
        if kind:
            where += " AND kind = ?"
            params.append(kind)
        return sorted(self._artifacts(where, params), key=lambda a: (a.kind, a.name))

    def corpora(self, names: list[str]) -> dict[str, Artifact]:
        """The current corpus artifact of each name, in the order given; an error naming the
        missing ones and the corpora the store has."""
        found = {a.name: a for a in self.current_all("corpus")}
        missing = [n for n in names if n not in found]
        if missing:
            have = ", ".join(sorted(found)) or "none yet"
            raise NotFoundError(f"no corpus {', '.join(map(repr, missing))} in the store (corpora: {have})",
                                where=str(self.root), fix="ingest it first: clipstore ingest FORMAT PATH --name NAME")
        return {n: found[n] for n in names}

    def history(self, name: str, kind: str | None = None) -> list[Version]:
        """Every version of a name (oldest first), with its state and whether it is current."""
        kinds = {a.kind for a in self._artifacts("WHERE name = ?", [name])}
        if kind is None and len(kinds) > 1:
            raise InputError(f"the name {name!r} is used by several kinds: {', '.join(sorted(kinds))}",
                             fix=f"say which one: {', '.join(f'{k}:{name}' for k in sorted(kinds))}")
        kind = kind or (kinds.pop() if kinds else None)
        if kind is None:
            raise NotFoundError(f"no artifact named {name!r} in the store", where=str(self.root),
                                fix="`clipstore ls` lists what the store holds")
        return self.overview("WHERE kind = ? AND name = ?", [kind, name])

    def overview(self, where: str = "", params: list | None = None) -> list[Version]:
        """Artifacts (all, or those `where` selects) with their state and whether they are current."""
        with self.connect() as con:
            current = {r[0] for r in con.execute("SELECT artifact_id FROM current_versions").fetchall()}
            pending = dict(con.execute("SELECT artifact_id, count(DISTINCT part) FROM parts "
                                       "WHERE NOT published AND NOT retired GROUP BY 1").fetchall())
            running = {r[0] for r in con.execute("SELECT artifact_id FROM runs WHERE status = 'running'").fetchall()}
        if running and not writer_alive(self.root):
            running = set()   # their process died: the next run will close them as interrupted
        out = []
        for a in self._artifacts(where, params):
            if a.artifact_id in running:
                state = "building"
            elif a.status == "complete" and not pending.get(a.artifact_id):
                state = "complete"
            else:
                state = "incomplete"   # a run stopped before finishing: re-running its command resumes it
            out.append(Version(a, a.artifact_id in current, state, pending.get(a.artifact_id, 0)))
        return out

    def use(self, ref: str) -> Artifact:
        """Make a completed version current again (`clipstore versions NAME --use ID`). Call
        inside `writing()`."""
        art = self.get(ref)
        if art.status != "complete":
            raise InputError(f"{art.artifact_id} never completed: it cannot be made current",
                             fix="re-run the command that builds it to finish it (it resumes), then it becomes current")
        with self.connect(read_only=False) as con:
            _point(con, art.kind, art.name, art.artifact_id, None)
        return self.get(art.artifact_id)

    def all_parts(self, artifact_ids: list[str]) -> dict[tuple[str, str], list[tuple[int, Path, str]]]:
        """(artifact, table) -> [(part, path, run_id)] of the visible parts of several artifacts,
        in one catalog read."""
        if not artifact_ids:
            return {}
        with self.connect() as con:
            rows = con.execute("SELECT artifact_id, table_name, part, path, run_id FROM parts "
                               f"WHERE {_VISIBLE} AND artifact_id IN (SELECT unnest(?)) ORDER BY part",
                               [artifact_ids]).fetchall()
        out: dict[tuple[str, str], list] = {}
        for aid, table, part, path, run in rows:
            out.setdefault((aid, table), []).append((part, self.root / path, run))
        return out

    def parts(self, artifact_id: str, table: str | None = None,
              pending: bool = False) -> list[tuple[int, str, Path]]:
        """Visible parts (part number, table, absolute path) in part order; with `pending`, also
        the parts of a run that has not finished (what a builder resumes from)."""
        sql = f"SELECT part, table_name, path FROM parts WHERE artifact_id = ? AND {_LIVE if pending else _VISIBLE}"
        params: list = [artifact_id]
        if table:
            sql += " AND table_name = ?"
            params.append(table)
        with self.connect() as con:
            rows = con.execute(sql + " ORDER BY part, table_name", params).fetchall()
        return [(p, t, self.root / path) for p, t, path in rows]

    def part_rows(self, artifact_id: str, table: str, pending: bool = False) -> list[tuple[Path, int]]:
        with self.connect() as con:
            rows = con.execute(f"SELECT path, rows FROM parts WHERE artifact_id = ? AND table_name = ? AND "
                               f"{_LIVE if pending else _VISIBLE} ORDER BY part", [artifact_id, table]).fetchall()
        return [(self.root / p, n) for p, n in rows]

    def table_paths(self, artifact: Artifact | str, table: str) -> list[Path]:
        aid = artifact.artifact_id if isinstance(artifact, Artifact) else artifact
        return [p for _, _, p in self.parts(aid, table)]

    def version_digests(self, artifact_ids: list[str]) -> dict[str, str]:
        """artifact id -> digest of its visible parts. Parts are immutable and new data arrives
        as new parts, so a recipe that pins its inputs' digests changes exactly when they do."""
        with self.connect() as con:
            return {aid: digest(con.execute(
                f"SELECT part, table_name, sha256 FROM parts WHERE artifact_id = ? AND {_VISIBLE} "
                "ORDER BY part, table_name", [aid]).fetchall()) for aid in artifact_ids}

    def lineage(self, artifact_id: str) -> list[tuple[str, str]]:
        with self.connect() as con:
            return con.execute("SELECT input_id, role FROM lineage WHERE artifact_id = ? ORDER BY role, input_id",
                               [artifact_id]).fetchall()

    # ---- writing ---------------------------------------------------------------------------
    @contextmanager
    def writing(self, wait: bool = False, timeout: float | None = None):
        with writer_lock(self.root, wait=wait, timeout=timeout):
            yield self

    def produce(self, *, kind: str, name: str, stage: str, version: int, params: dict,
                inputs: list[Artifact | str] = (), sources: list[Artifact | str] = (),
                tables: dict | None = None, config: dict | None = None,
                reuse: bool = True) -> Artifact | "ArtifactBuilder":
        """The one protocol every stage follows. Call inside `writing()`.

        The recipe is (kind, name, stage, stage `version`, params, the current digest of every
        input artifact), so a changed input, parameter or stage version means a new artifact.
        When this recipe already completed (and `reuse`), the run is recorded as a no-op and the
        finished artifact is returned, made current again, with nothing read or recomputed.
        Otherwise a builder is returned: it resumes after the parts a killed run committed, and
        its `finish()` publishes them all at once. `sources` are artifacts an incremental stage
        grows with (ingest's raw data has none; embed's corpus): lineage, not recipe."""
        ids = sorted({i.artifact_id if isinstance(i, Artifact) else i for i in inputs})
        pinned = self.version_digests(ids)
        recipe = {"kind": kind, "name": name, "stage": stage, "stage_version": version, "params": params,
                  "inputs": [[i, pinned[i]] for i in ids]}
        builder = ArtifactBuilder(self, recipe, tables or {}, config or {})
        if sources:
            builder.add_lineage([s.artifact_id if isinstance(s, Artifact) else s for s in sources])
        if reuse:
            done = builder.reuse_if_complete()
            if done is not None:
                return done
        return builder


def _point(con, kind: str, name: str, artifact_id: str, run_id: str | None) -> None:
    con.execute("INSERT OR REPLACE INTO current_versions VALUES (?, ?, ?, ?, ?)",
                [kind, name, artifact_id, _now(), run_id])


class ArtifactBuilder:
    """Writes one artifact's parts; `finish()` publishes them. Orphans and the run rows of
    killed runs are cleaned up on start (the caller holds the writer lock, so no other run is
    alive)."""

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
        self._retire: set[int] = set()
        self._tables = tables
        now = _now()
        revision, dirty = git_revision()
        with store.connect(read_only=False) as con:
            con.execute("BEGIN")
            con.execute("UPDATE runs SET status = 'interrupted', finished_at = ?, "
                        "error = 'the process stopped before the run finished' WHERE status = 'running'", [now])
            row = con.execute("SELECT status FROM artifacts WHERE artifact_id = ?", [self.artifact_id]).fetchone()
            self.previous_status = row[0] if row else None
            self.pending_parts = con.execute(
                "SELECT count(*) FROM parts WHERE artifact_id = ? AND NOT published AND NOT retired",
                [self.artifact_id]).fetchone()[0]
            con.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, 'running', ?, NULL, NULL, ?, ?)",
                        [self.run_id, self.artifact_id, recipe["stage"], " ".join(sys.argv)[:2000],
                         getpass.getuser(), socket.gethostname(), now, json.dumps(config, default=str),
                         revision, dirty])
            con.execute("COMMIT")
        self._sweep_orphans()

    def _ensure_row(self, con) -> None:
        """The artifact enters the catalog with its first part (or its finish): a run that fails
        before writing anything leaves a failed run row, not an empty artifact."""
        if self.previous_status is not None:
            return
        now = _now()
        con.execute("INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, 'building', ?, ?, ?, ?, NULL, NULL, ?)",
                    [self.artifact_id, self.kind, self.name, self.recipe_digest, json.dumps(self.recipe),
                     str(self.rel_path), PACKAGE_VERSION, now, now, json.dumps(self._tables)])
        for input_id in sorted({i[0] for i in self.recipe.get("inputs", [])}):
            con.execute("INSERT INTO lineage VALUES (?, ?, 'input')", [self.artifact_id, input_id])
        self.previous_status = "building"

    def as_artifact(self) -> Artifact:
        """This artifact as it stands mid-run (for reading back its own pending parts)."""
        now = _now()
        return Artifact(self.artifact_id, self.kind, self.name, self.recipe, self.recipe_digest,
                        self.previous_status or "building", self.path, now, now, tables=self._tables)

    @property
    def complete(self) -> bool:
        """This recipe finished before (its published parts are a complete version)."""
        return self.previous_status == "complete"

    def reuse_if_complete(self) -> Artifact | None:
        """The finished artifact when this exact recipe already completed and no later run left
        parts pending: the run is recorded as a no-op, the version becomes current again, and
        nothing is recomputed. None when there is work to do."""
        if not self.complete or self.pending_parts:
            return None
        done = self.store.get(self.artifact_id)
        return self.finish(done.counts, done.stats, summary={"reused": True}, noop=True)

    def _sweep_orphans(self) -> None:
        """Delete files a killed run renamed into place but never committed, and stale temp dirs."""
        committed = {p for _, _, p in self.store.parts(self.artifact_id, pending=True)}
        with self.store.connect() as con:
            retired = {self.store.root / r[0] for r in con.execute(
                "SELECT path FROM parts WHERE artifact_id = ? AND retired", [self.artifact_id]).fetchall()}
        if self.path.exists():
            for f in self.path.rglob("*"):
                if f.is_file() and f not in committed and f not in retired and _PART_FILE.match(f.name):
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
        """The parts this artifact holds so far: published ones and those of unfinished runs."""
        return [p for p in self.store.parts(self.artifact_id, table, pending=True) if p[0] not in self._retire]

    def committed_rows(self, table: str) -> list[tuple[Path, int]]:
        """(path, rows) of this table's parts so far, without the ones this run retires."""
        keep = {path for _, _, path in self.committed_parts(table)}
        return [(p, n) for p, n in self.store.part_rows(self.artifact_id, table, pending=True) if p in keep]

    def is_committed(self, part: int) -> bool:
        """A killed run may have committed this part already: then it is not written again."""
        return any(p == part for p, _, _ in self.committed_parts())

    def next_part(self) -> int:
        with self.store.connect() as con:   # retired numbers are never reused
            top = con.execute("SELECT max(part) FROM parts WHERE artifact_id = ?", [self.artifact_id]).fetchone()[0]
        return 0 if top is None else top + 1

    def temp_dir(self, name: str) -> Path:
        d = self.tmp_root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def commit_part(self, part: int, files: dict[str, tuple[Path, int]],
                    digests: dict[str, str] | None = None) -> None:
        """Commit a part: files maps table name -> (temp file, row count). Renames first, then
        one catalog transaction; until that transaction commits, the part does not exist, and
        until `finish()` publishes it, readers do not see it. `digests` (table -> sha256): what
        the process that wrote the files computed as it closed them (a Ray worker), so that the
        committing process does not read every byte again."""
        self.commit_parts([(part, files, digests)])

    def commit_parts(self, parts: list[tuple[int, dict[str, tuple[Path, int]], dict[str, str] | None]]) -> None:
        """Commit several complete parts (in part order) in one catalog transaction: all of them
        or, if it fails, none. A driver whose workers finish parts faster than it commits them
        one by one (Ray) commits what is ready together: the transaction, not the part, is the
        fixed cost."""
        published = []
        for part, files, digests in parts:
            for table, (tmp_file, rows) in sorted(files.items()):
                final = self.path / table / f"{part:06d}{tmp_file.suffix}"
                sha = digests[table] if digests is not None else file_sha256(tmp_file)
                fs.publish(tmp_file, final)
                published.append([self.artifact_id, part, table, str(final.relative_to(self.store.root)), rows,
                                  sha, self.run_id, _now(), False, False])
        with self.store.connect(read_only=False) as con:
            con.execute("BEGIN")
            self._ensure_row(con)
            con.executemany("INSERT INTO parts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", published)
            con.execute("UPDATE artifacts SET updated_at = ? WHERE artifact_id = ?", [_now(), self.artifact_id])
            con.execute("COMMIT")
        self.parts_committed += len(parts)

    def retire_part(self, part: int) -> None:
        """Drop every table file of a committed part from the version this run finishes (its
        rows were rewritten into a new part); readers keep seeing it until then."""
        self._retire.add(part)

    def write_file(self, relpath: str, data: bytes | str) -> Path:
        """Atomically (re)write a small artifact-level file such as sizes.json."""
        path = self.path / relpath
        fs.atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
        return path

    def finish(self, counts: dict, stats: dict | None = None, summary: dict | None = None,
               noop: bool = False) -> Artifact:
        """Complete the version: write stats.json and manifest.json, then in one catalog
        transaction publish the pending parts, retire replaced ones, mark the artifact complete,
        point its name at it and close the run."""
        stats = stats or {}
        live = self.committed_parts()
        manifest = {"artifact_id": self.artifact_id, "recipe": self.recipe, "recipe_digest": self.recipe_digest,
                    "counts": counts, "stats": stats,
                    "parts": [{"part": p, "table": t, "path": str(path.relative_to(self.path))} for p, t, path in live]}
        if not noop:
            self.write_file("stats.json", json.dumps(stats, indent=1, sort_keys=True, default=str))
            self.write_file("manifest.json", json.dumps(manifest, indent=1, sort_keys=True, default=str))
        now = _now()
        with self.store.connect(read_only=False) as con:
            con.execute("BEGIN")
            self._ensure_row(con)
            con.execute("UPDATE parts SET published = true WHERE artifact_id = ? AND NOT published",
                        [self.artifact_id])
            if self._retire:
                con.execute("UPDATE parts SET retired = true WHERE artifact_id = ? AND list_contains(?, part)",
                            [self.artifact_id, sorted(self._retire)])
            con.execute("UPDATE artifacts SET status = 'complete', updated_at = ?, counts = ?, stats = ? "
                        "WHERE artifact_id = ?", [now, json.dumps(counts), json.dumps(stats, default=str),
                                                  self.artifact_id])
            _point(con, self.kind, self.name, self.artifact_id, self.run_id)
            self._close_run(con, "noop" if noop else "done", summary or counts, None)
            con.execute("COMMIT")
        fs.remove(self.tmp_root)
        return replace(self.store.get(self.artifact_id), noop=noop)

    def fail(self, error: BaseException) -> None:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        fs.remove(self.tmp_root)   # first: on a full disk this frees the space the catalog write needs
        with self.store.connect(read_only=False) as con:
            self._close_run(con, status, None, f"{type(error).__name__}: {error}"[:4000])

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

