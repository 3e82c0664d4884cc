"""The CLI's standard output when its reader goes away (`clipstore ... | head -1`).

Python ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError: a traceback, and a
command cut short between two of the files it writes. Here a closed reader only silences the
rest of the output; the command carries on, so each file it writes is written in full."""

from __future__ import annotations

import os
import sys


class QuietStdout:
    """Wraps sys.stdout: the first BrokenPipeError points the descriptor at /dev/null (so the
    interpreter's final flush is silent too) and later writes are dropped."""

    def __init__(self, stream):
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._silence()

    def _silence(self) -> None:
        self.reader_gone = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


def run_guarded(body) -> int:
    """body() -> exit code, with a closed stdout made quiet and Ctrl-C (also outside a command's
    body: while parsing or importing) ending in one line and exit code 130."""
    previous = sys.stdout
    if previous is not None and not isinstance(previous, QuietStdout):
        sys.stdout = QuietStdout(previous)
    try:
        return body()
    except KeyboardInterrupt:
        print("clipstore: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout.flush()   # here, not at exit: a closed reader is noticed while it is quiet
        sys.stdout = previous
