"""The corpus name an ingest writes under. Formats that are one dataset (rsicd, ucm_captions, …)
default to the format's name; generic formats (karpathy, jsonl, imagefolder, hf) hold any dataset,
so two of them would collide under the format's name: their name is --name, else the imagefolder
--preset, else the folder's name (for a file, the folder holding it), slugged. The two folders of a
`clipstore synth` output name themselves from its synth.json: `synth` / `synth_cls`, and
`synth_<domain>` / `synth_<domain>_cls` for a styled domain."""

from __future__ import annotations

import re
from pathlib import Path

from clipstore.warehouse.errors import InputError

GENERIC_FORMATS = frozenset({"karpathy", "jsonl", "imagefolder", "hf"})
SYNTH_FOLDERS = {"karpathy": "captions", "imagefolder": "classification"}   # format -> folder of a synth output


def corpus_name(fmt: str, path: str | Path, name: str | None = None,
                preset: str | None = None) -> tuple[str, str]:
    """(name, where it came from: 'given', 'format', 'preset', 'synth' or 'path')."""
    if name:
        return name, "given"
    if fmt not in GENERIC_FORMATS:
        return fmt, "format"
    if fmt == "imagefolder" and preset:
        return preset, "preset"
    synth = _synth_name(fmt, _folder(path))
    if synth:
        return synth, "synth"
    slug = re.sub(r"[^a-z0-9_]+", "_", _folder(path).name.lower()).strip("_")
    if not slug:
        raise InputError(f"cannot derive a corpus name from {path}", where=str(path), fix="pass --name NAME")
    return slug, "path"


def _synth_name(fmt: str, folder: Path) -> str | None:
    """The corpus name of a synth output's captions or classification folder, else None."""
    if SYNTH_FOLDERS.get(fmt) != folder.name:
        return None
    from clipstore.ingest.synth import corpus_names, read_spec
    info = read_spec(folder.parent)
    return corpus_names(info.get("domain"))[folder.name] if info else None


def _folder(path: str | Path) -> Path:
    path = Path(path).resolve()
    return path.parent if path.is_file() else path


def describe(name: str, how: str, path: str | Path) -> str | None:
    """The line the CLI prints when the name was not given."""
    if how == "path":
        return f"corpus name {name!r} derived from the folder {_folder(path).name!r} (pass --name to choose)"
    if how == "synth":
        return (f"corpus name {name!r} from the synth output {_folder(path).parent.name!r} "
                "(pass --name to choose)")
    if how == "preset":
        return f"corpus name {name!r} from --preset (pass --name to choose)"
    return None
