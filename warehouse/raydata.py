"""Running a stage's map work on a Ray cluster (`--ray ADDRESS|auto|local`), with Ray Data.

The driver (the process that runs the command) keeps everything that makes the store a store:
it enumerates the work, holds the writer lock, and commits each part to the catalog in part
order once its files are complete. Ray runs only the per-part functions the local path runs
too, in tasks (`map_rows`) or in an actor pool (`map_actors`), so a part's bytes do not depend
on where it was computed. Ray is imported here only, and only when a command asks for it.

What a remote function returns is a row (a dict of ints and bytes). An error a user can fix is
returned as a row too (`error_row`) and raised again on the driver (`raise_errors`): an
exception raised in Ray Data loses its class and its `fix:` on the way. See docs/scale.md."""

from __future__ import annotations

import logging
import os
import pickle
import queue
import threading
import warnings
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

from clipstore.warehouse.errors import ClipstoreError, InputError

INSTALL = "pip install 'clipstore[ray]'"
ADDRESS_HELP = ("auto (the cluster `ray start` runs on this machine, or $RAY_ADDRESS), HOST:PORT, ray://HOST:PORT, "
                "or local (a one-machine cluster for this run only, on 127.0.0.1)")
ERROR_KEY = "__clipstore_error__"


def import_ray():
    """The ray module, or an error naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate extra of ray: check it is there too
    except ImportError as exc:
        raise ClipstoreError(f"--ray needs Ray Data, which is not installed ({exc})",
                             fix=f"{INSTALL} (ray[data] >= 2.9), or run without --ray") from None
    return ray


def check_address(address: str) -> str:
    if not isinstance(address, str) or not address.strip():
        raise InputError(f"--ray {address!r} is not a Ray address", fix=f"use {ADDRESS_HELP}")
    return address.strip()


@contextmanager
def session(address: str):
    """Connected to a Ray cluster for the block, and after: the connection stays for the rest of
    the process (Ray disconnects at exit), so a pipeline's later stages, or `project ingest`'s
    next corpus, do not pay Ray's start-up again. A process already connected (ray.init() in a
    notebook, a script, a test) keeps its connection; otherwise this connects (`auto`, HOST:PORT,
    ray://...) or starts a one-machine loopback cluster (`local`) for the process."""
    address = check_address(address)
    ray = import_ray()
    if ray.is_initialized():
        _check_same_cluster(ray, address)
        yield ray
        return
    kwargs: dict = {"address": address, "logging_level": logging.WARNING, "log_to_driver": False}
    if address == "local":
        _loopback_only()
        kwargs.update(include_dashboard=False)
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise ClipstoreError(f"cannot reach a Ray cluster at --ray {address}: {exc}",
                             fix="start one with `ray start --head` (then --ray auto), pass the head's address "
                                 "(--ray HOST:6379), or --ray local for a cluster of this machine alone") from None
    yield ray


def _check_same_cluster(ray, address: str) -> None:
    """A process connected to one cluster cannot use another: say so rather than run elsewhere."""
    if address in ("auto", "local") or address.startswith("ray://") or ":" not in address:
        return
    current = ray.get_runtime_context().gcs_address
    if current and current != address:
        raise InputError(f"this process is connected to the Ray cluster at {current}, not {address}",
                         fix=f"pass --ray {current} (or auto), or run in a new process")


def _loopback_only() -> None:
    """A cluster clipstore starts for itself serves this process only: bind it to 127.0.0.1, send
    no usage statistics, and keep Ray's token authentication with a token of this process's own
    (a temporary file, removed at exit) instead of one Ray would leave in ~/.ray. A user's own
    settings win."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    auth = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    if not any(k in os.environ for k in auth) and not (Path.home() / ".ray" / "auth_token").exists():
        import atexit
        import secrets
        import tempfile
        fd, token = tempfile.mkstemp(prefix="clipstore-ray-token-")   # mode 0600
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        atexit.register(lambda: os.path.exists(token) and os.remove(token))
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)
        try:   # Ray read its configuration when imported: have it read the mode again, as Ray does itself
            from ray._raylet import Config
            Config.initialize("")
        except (ImportError, AttributeError):
            pass
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # Ray's switch: node address = loopback
    from ray._private import ray_constants
    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("0", "false", "False")


# ---- what the cluster has ---------------------------------------------------------------------
def cluster_resources() -> dict[str, float]:
    import ray
    return dict(ray.cluster_resources())


def gpu_node_cpus_per_gpu() -> int:
    """CPUs per GPU on the tightest GPU node (what an actor holding one GPU may also reserve)."""
    import ray
    ratios = [n["Resources"].get("CPU", 0) / n["Resources"]["GPU"] for n in ray.nodes()
              if n.get("Alive") and n["Resources"].get("GPU")]
    return max(1, int(min(ratios))) if ratios else 1


# ---- rows in, rows out ------------------------------------------------------------------------
def dumps(obj) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes):
    return pickle.loads(data)


def error_row(exc: ClipstoreError) -> dict:
    """The columns of a failed call: no result, the error (every row has both columns)."""
    return {"result": None, ERROR_KEY: dumps(exc)}


def raise_errors(row: dict) -> dict:
    """The row, or the ClipstoreError a remote function returned in its place."""
    if row.get(ERROR_KEY) is not None:
        raise loads(row[ERROR_KEY])
    return row


def in_order(batches: Iterable[list[dict]], first: int, key: str = "part") -> Iterator[list[dict]]:
    """Batches of rows in `key` order from `first` on, whatever order they complete in: the
    driver commits part n only after parts first..n-1, so a killed run leaves a prefix of parts.
    Each batch is every row that became committable at once (one catalog transaction)."""
    waiting: dict[int, dict] = {}
    expected = first
    for batch in batches:
        for row in batch:
            waiting[int(row[key])] = row
        ready = []
        while expected in waiting:
            ready.append(waiting.pop(expected))
            expected += 1
        if ready:
            yield ready
    if waiting:
        raise ClipstoreError(f"parts {sorted(waiting)} completed but part {expected} never did")


def _pump(ds, out: queue.Queue, tag: int) -> None:
    """Iterate a dataset on a thread, handing rows (or its error) to the driver's thread."""
    try:
        for row in ds.iter_rows():
            out.put((tag, row, None))
    except BaseException as exc:   # noqa: BLE001 - raised again on the driver's thread
        out.put((tag, None, exc))


def _ready(out: queue.Queue) -> list[tuple]:
    """What completed: wait for one, then take everything else already there."""
    got = [out.get()]
    while True:
        try:
            got.append(out.get_nowait())
        except queue.Empty:
            return got


@contextmanager
def _quiet_logs():
    """Ray Data's INFO lines (the plan, "execution finished") and its progress-bar notice stay
    out of the driver's terminal while clipstore's datasets run; errors still show."""
    log = logging.getLogger("ray.data")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@contextmanager
def _data_context():
    """The DataContext clipstore's datasets are made in (a dataset keeps the context it was made
    in): no Ray progress bars (the driver shows its own), no plan printed at each start, and no
    throttling of the first tasks. Ray Data's default backpressure runs a dataset's first task
    alone until it has measured its output; our outputs are a few paths and counts, so that
    measurement would only delay the start by a whole part."""
    from ray.data import DataContext
    with warnings.catch_warnings():   # copying a context repeats Ray's own deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = DataContext.get_current().copy()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        from ray.data._internal.execution.backpressure_policy import (ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
                                                                      DownstreamCapacityBackpressurePolicy)
        ctx.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, [DownstreamCapacityBackpressurePolicy])
    except ImportError:   # another Ray version: its defaults
        pass
    with _quiet_logs(), DataContext.current(ctx):
        yield ctx


def map_rows(rows: Iterator[dict], fn: Callable[[dict], dict], *, window: int, concurrency: int | None = None,
             num_cpus: float = 1.0) -> Iterator[list[dict]]:
    """fn over rows in Ray tasks (one row per block: a row is a whole part); yields the rows
    completed since the last yield. Rows are taken from the iterator `window` at a time, each
    window one dataset, so the driver never holds more than two windows of work however large
    the source; the next window starts while the current one's last tasks run, so the cluster
    does not idle between them."""
    import ray.data
    lookahead = max(1, concurrency or int(cluster_resources().get("CPU", 1)))
    out: queue.Queue = queue.Queue()
    remaining: dict[int, int] = {}

    def launch(wid: int) -> bool:
        chunk = list(islice(rows, window))
        if not chunk:
            return False
        compute = ray.data.TaskPoolStrategy(size=concurrency) if concurrency else None
        with _data_context():
            ds = ray.data.from_items(chunk, override_num_blocks=len(chunk)).map(fn, num_cpus=num_cpus,
                                                                                 compute=compute)
        remaining[wid] = len(chunk)
        threading.Thread(target=_pump, args=(ds, out, wid), name=f"clipstore-ray-window-{wid}", daemon=True).start()
        return True

    latest, more = 0, launch(0)
    with _quiet_logs():
        while remaining:
            if more and remaining.get(latest, 0) <= lookahead:
                latest += 1
                more = launch(latest)
            batch = []
            for wid, row, exc in _ready(out):
                if exc is not None:
                    raise exc
                remaining[wid] -= 1
                if not remaining[wid]:
                    del remaining[wid]
                batch.append(raise_errors(row))
            yield batch


def map_actors(rows: list[dict], cls: type, *, constructor: dict, size: int, num_cpus: float = 1.0,
               num_gpus: float = 0.0) -> Iterator[list[dict]]:
    """cls(**constructor) in a fixed pool of `size` actors (each holds its state, e.g. a model,
    for the whole dataset), called on one row at a time; yields the rows completed since the
    last yield."""
    import ray.data
    if not rows:
        return
    with _data_context():
        ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            cls, fn_constructor_kwargs=constructor, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size), num_cpus=num_cpus, num_gpus=num_gpus or None)
    out: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(ds, out, 0), name="clipstore-ray-actors", daemon=True).start()
    left = len(rows)
    with _quiet_logs():
        while left:
            batch = []
            for _, row, exc in _ready(out):
                if exc is not None:
                    raise exc
                batch.append(raise_errors(row))
            left -= len(batch)
            yield batch


def map_blocks(fn: Callable, shared, blocks: list, *, num_cpus: float = 1.0) -> list:
    """[fn(shared, block) for block in blocks], each call one Ray task (plain tasks, not Ray
    Data: the calls are few and large). `shared` (e.g. a matrix every block searches) goes into
    the object store once and is read there by every task; results come back in block order.
    A ClipstoreError raised in a task is raised again here with its class and fix."""
    import ray
    if not blocks:
        return []
    ref = ray.put(shared)
    task = ray.remote(num_cpus=num_cpus)(_call_block)
    rows = ray.get([task.remote(fn, ref, block) for block in blocks])
    return [raise_errors(row)["result"] for row in rows]


def _call_block(fn: Callable, shared, block) -> dict:
    try:
        return {"result": fn(shared, block), ERROR_KEY: None}
    except ClipstoreError as exc:
        return error_row(exc)


def prestart(modules: list[str], slots: int | None = None) -> None:
    """Start this job's workers now, importing `modules`, while the driver reads the source: a
    new driver (each CLI command) gets fresh worker processes, whose imports would otherwise
    delay the first parts. Fire and forget; the map tasks then reuse these processes."""
    import ray
    slots = slots or max(1, int(cluster_resources().get("CPU", 1)))
    task = ray.remote(num_cpus=1, max_retries=0)(_import_modules)
    for _ in range(slots):
        task.remote(modules)


def _import_modules(modules: list[str]) -> None:
    import importlib
    for name in modules:
        importlib.import_module(name)


def warm_up() -> None:
    """Run one empty dataset: Ray Data starts its cluster-wide helper actors on first use (seconds;
    they outlive the job on a `ray start` cluster), so a benchmark or a test can pay that first."""
    for _ in map_rows(iter([{"part": 0}]), _identity, window=1):
        pass


def _identity(row: dict) -> dict:
    return row


# ---- inside a task ----------------------------------------------------------------------------
def check_visible(path: Path, what: str) -> None:
    """A worker writes where the driver will read: the store (or a source) must be the same
    path on every node, i.e. on a filesystem they all mount."""
    if not path.exists():
        import socket
        raise ClipstoreError(f"{what} {path} is not visible on Ray node {socket.gethostname()}",
                             where=str(path),
                             fix="put the store and the raw data on a filesystem every node mounts at the same "
                                 "path (NFS, Lustre, a bind mount), or run without --ray")


@contextmanager
def driver_cwd(cwd: str, required: bool):
    """Relative paths (a source given as data/Images) mean on a worker what they mean on the
    driver, so that reject reasons, which name the path, are the same text. `required`: some
    path is relative, so a node without that folder cannot do the work."""
    before = os.getcwd()
    try:
        os.chdir(cwd)
    except OSError:
        if required:
            import socket
            raise ClipstoreError(f"the driver's working directory {cwd} does not exist on Ray node "
                                 f"{socket.gethostname()}, and the source's paths are relative to it",
                                 fix="give the paths as absolute paths on a filesystem every node mounts") from None
        yield
        return
    try:
        yield
    finally:
        os.chdir(before)
