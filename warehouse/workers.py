"""Helper processes that behave: one multiprocessing context for every stage's workers.

What it guarantees, whatever the start method:

- a worker never re-runs the caller's main module. The stdlib's forkserver and spawn methods
  re-import `__main__` in each child, so a user's script that calls the library without an
  `if __name__ == "__main__":` guard (or a script read from stdin) would run again in every
  worker: its ingest again, against the store's lock. Here the children get the parent's
  preparation data without the main module;
- a worker exits when the process that started it dies, even by SIGKILL (it watches that
  process: a pidfd where Linux has one, else a poll; plus PR_SET_PDEATHSIG for direct children),
  so no worker, fork server or resource tracker outlives a killed run;
- a worker ignores SIGINT: Ctrl-C reaches the whole process group, and the parent alone decides
  how to stop (it prints one line), instead of every worker printing a traceback.

The store's writer lock is never inherited either: forkserver and spawn children start from a
fresh interpreter, and warehouse.lock closes the lock's descriptors in a forked child."""

from __future__ import annotations

import io
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import context as mp_context

POLL_SECONDS = 0.5   # the fallback watchdog's period, where there is no pidfd
_PR_SET_PDEATHSIG = 1


def _preparation_data(name: str) -> dict:
    """What the stdlib sends a forkserver or spawn child before the process object, less the main
    module (init_main_from_path / init_main_from_name): the targets we start never live there."""
    from multiprocessing import spawn
    data = spawn.get_preparation_data(name)
    data.pop("init_main_from_path", None)
    data.pop("init_main_from_name", None)
    return data


class _Watched:
    """Mixed into a Process class: the parent records itself; the child, before running its target,
    ignores SIGINT and starts watching the parent."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._main_pid = os.getpid()
        self._from_main_thread = threading.current_thread() is threading.main_thread()

    def run(self):
        on_worker_start(self._main_pid, self._from_main_thread)
        super().run()


if sys.platform != "win32":
    from multiprocessing import popen_forkserver

    class _ForkServerPopen(popen_forkserver.Popen):
        def _launch(self, process_obj):
            # multiprocessing.popen_forkserver.Popen._launch (3.10-3.13), with _preparation_data
            from multiprocessing import forkserver, util
            from multiprocessing.context import reduction, set_spawning_popen
            prep_data = _preparation_data(process_obj._name)
            buf = io.BytesIO()
            set_spawning_popen(self)
            try:
                reduction.dump(prep_data, buf)
                reduction.dump(process_obj, buf)
            finally:
                set_spawning_popen(None)
            self.sentinel, w = forkserver.connect_to_new_process(self._fds)
            _parent_w = os.dup(w)   # the child's sentinel of this process, as the stdlib keeps it
            self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
            with open(w, "wb", closefd=True) as f:
                f.write(buf.getbuffer())
            self.pid = forkserver.read_signed(self.sentinel)

    class ForkServerProcess(_Watched, mp_context.ForkServerProcess):
        @staticmethod
        def _Popen(process_obj):
            return _ForkServerPopen(process_obj)

    class ForkProcess(_Watched, mp_context.ForkProcess):
        pass

    class _ForkServerContext(mp_context.ForkServerContext):
        Process = ForkServerProcess

    class _ForkContext(mp_context.ForkContext):
        Process = ForkProcess

    class SpawnProcess(_Watched, mp_context.SpawnProcess):
        pass

    class _SpawnContext(mp_context.SpawnContext):
        Process = SpawnProcess
else:  # pragma: no cover - Windows: spawn only (the stdlib re-imports the main module there)
    class SpawnProcess(_Watched, mp_context.SpawnProcess):
        pass

    class _SpawnContext(mp_context.SpawnContext):
        Process = SpawnProcess


def context(method: str = "forkserver", preload: list[str] | tuple[str, ...] = ()) -> mp_context.BaseContext:
    """A multiprocessing context whose processes behave as this module promises.

    `forkserver` (the default: workers fork from a clean server process, not from a parent that
    holds threads, a model or a DuckDB connection) falls back to spawn where it is missing;
    `preload` names modules the fork server imports once for all its children."""
    available = multiprocessing.get_all_start_methods()
    if method not in available:
        method = "spawn"
    if method == "forkserver":
        ctx = _ForkServerContext()
        if preload:
            ctx.set_forkserver_preload([__name__, *preload])
        return ctx
    return _ForkContext() if method == "fork" else _SpawnContext()


@contextmanager
def process_pool(max_workers: int, preload: list[str] | tuple[str, ...] = ()):
    """A ProcessPoolExecutor on context(); when the block fails (Ctrl-C included) the queued work
    is cancelled, so stopping waits for the running calls only."""
    pool = ProcessPoolExecutor(max_workers=max_workers, mp_context=context("forkserver", preload))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# ---- in the child ----------------------------------------------------------------------------
def on_worker_start(main_pid: int, from_main_thread: bool = False) -> None:
    """Ignore SIGINT and exit when `main_pid` dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if from_main_thread and os.getppid() == main_pid:
        # the kernel kills a direct child when the thread that started it exits: only the main
        # thread's exit is the process's exit
        _set_parent_death_signal()
    watch_parent(main_pid)


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def watch_parent(main_pid: int) -> None:
    """A daemon thread that ends this process (os._exit) once `main_pid` is gone."""
    try:
        fd = os.pidfd_open(main_pid)
    except ProcessLookupError:
        os._exit(1)   # gone already
    except (AttributeError, OSError):
        fd = None     # no pidfd (not Linux, or a kernel before 5.3): poll
    target = _wait_pidfd if fd is not None else _poll_pid
    threading.Thread(target=target, args=(fd if fd is not None else main_pid,), name="parent-watchdog",
                     daemon=True).start()


def _wait_pidfd(fd: int) -> None:
    select.select([fd], [], [])   # a pidfd becomes readable when its process exits
    os._exit(1)


def _poll_pid(pid: int) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:   # the pid now belongs to another user's process
            os._exit(1)
