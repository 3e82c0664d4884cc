"""The corpus name an ingest writes under. Formats that are one dataset (rsicd, ucm_captions, …)
default to the format's name; generic formats (karpathy, jsonl, imagefolder, hf) hold any dataset,
so two of them would collide under the format's name: their name is --name, else the imagefolder
--preset, else the folder's name (for a file, the folder holding it), slugged."""

from __future__ import annotations

import re
from pathlib import Path

from clipstore.warehouse.errors import InputError

GENERIC_FORMATS = frozenset({"karpathy", "jsonl", "imagefolder", "hf"})


def corpus_name(fmt: str, path: str | Path, name: str | None = None,
                preset: str | None = None) -> tuple[str, str]:
    """(name, where it came from: 'given', 'format', 'preset' or 'path')."""
    if name:
        return name, "given"
    if fmt not in GENERIC_FORMATS:
        return fmt, "format"
    if fmt == "imagefolder" and preset:
        return preset, "preset"
    slug = re.sub(r"[^a-z0-9_]+", "_", _folder(path).name.lower()).strip("_")
    if not slug:
        raise InputError(f"cannot derive a corpus name from {path}", where=str(path), fix="pass --name NAME")
    return slug, "path"


def _folder(path: str | Path) -> Path:
    path = Path(path).resolve()
    return path.parent if path.is_file() else path


def describe(name: str, how: str, path: str | Path) -> str | None:
    """The line the CLI prints when the name was not given."""
    if how == "path":
        return f"corpus name {name!r} derived from the folder {_folder(path).name!r} (pass --name to choose)"
    if how == "preset":
        return f"corpus name {name!r} from --preset (pass --name to choose)"
    return None
