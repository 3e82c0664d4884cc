"""One exception family. Every message says what went wrong, where, and how to fix it."""


class ClipstoreError(Exception):
    """Base of every error clipstore raises on purpose; the CLI prints it without a traceback."""

    exit_code = 1

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        parts = [what]
        if where:
            parts.append(f"  where: {where}")
        if fix:
            parts.append(f"  fix:   {fix}")
        super().__init__("\n".join(parts))


class InputError(ClipstoreError):
    """The raw input (layout, annotation file, option) is unusable as given."""

    exit_code = 2


class NotFoundError(ClipstoreError):
    """An artifact, corpus or file the user named does not exist."""

    exit_code = 3


class StoreLockedError(ClipstoreError):
    """Another process holds the store's writer lock."""

    exit_code = 4


class ReadOnlyError(ClipstoreError):
    """A SQL statement would change the store or the session."""

    exit_code = 5
