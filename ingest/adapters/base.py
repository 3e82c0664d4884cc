"""The adapter contract: `open(path, options)` resolves a raw layout and yields records."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from clipstore.ingest.records import ImageRef, Reject, SourceRecord
from clipstore.ingest.paths import PathEscape, resolve_inside
from clipstore.warehouse.errors import InputError


@dataclass
class IngestOptions:
    images: Path | None = None        # image root, when not the layout's standard folder
    image_map: Path | None = None     # TSV: name in the annotation -> path below the image root
    keep_missing: bool = False        # keep entries whose image is missing as caption-only samples
    preset: str | None = None         # imagefolder presets (ucm_cls, whu_rs19, rsscn7, aid, resisc45)


@dataclass
class Source:
    records: Iterable[SourceRecord | Reject]
    files: list[Path]                                  # annotation files read
    image_root: Path | None = None
    classes: list[tuple[str, str]] | None = None        # (class as in the source, display name), in index order
    notes: list[str] = field(default_factory=list)


class Adapter(ABC):
    format: str = ""
    summary: str = ""
    layout: str = ""          # the expected raw layout, shown by `doctor` and errors

    @abstractmethod
    def open(self, path: Path, options: IngestOptions) -> Source:
        """Resolve the raw layout at `path` (InputError when unusable) and return its records."""


def require_path(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise InputError(f"{what} not found", where=str(path), fix=f"expected layout: {layout}")
    return path


def find_first(root: Path, names: Iterable[str]) -> Path | None:
    for name in names:
        if (root / name).exists():
            return root / name
    return None


def locate_annotation(path: Path, names: tuple[str, ...], what: str, layout: str) -> tuple[Path, Path]:
    """(annotation file, corpus root) for a PATH that is either the root or the file itself."""
    require_path(path, what, layout)
    if path.is_file():
        return path, path.parent
    found = find_first(path, names)
    if found is None:
        raise InputError(f"no {' or '.join(names)} in {path}", where=str(path), fix=f"expected layout: {layout}")
    return found, path


def _unreadable(path: Path, exc: OSError) -> InputError:
    return InputError(f"cannot read {path.name}: {exc.strerror or exc}", where=str(path),
                      fix="check that the file exists and is readable")


def read_text(path: Path, encoding: str = "utf-8") -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{path.name} is not valid {encoding.upper()} (byte {exc.start}, line {line})",
                         where=str(path), fix=f"re-encode the file as {encoding.upper()}") from None


def read_lines(path: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text or None, error or None) per line; undecodable lines become errors, so
    one bad line costs one reject, not the file. CRLF endings are accepted."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise _unreadable(path, exc) from None
    with f:
        for n, raw in enumerate(f, start=1):
            raw = raw.rstrip(b"\r\n")
            try:
                yield n, raw.decode("utf-8"), None
            except UnicodeDecodeError as exc:
                yield n, None, f"line {n} of {path.name} is not valid UTF-8 (byte {exc.start})"


def _no_duplicate_keys(path: Path):
    def hook(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise InputError(f"duplicate key {k!r} in a JSON object of {path.name}", where=str(path),
                                 fix="remove the repeated key: which value is meant is ambiguous")
            seen.add(k)
        return dict(pairs)
    return hook


def load_json(path: Path):
    """json.load with errors that name the file and position, and duplicate keys refused."""
    text = read_text(path)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON in {path.name}: {exc.msg} at line {exc.lineno}, column {exc.colno} "
                         f"(char {exc.pos})", where=str(path), fix="repair or re-download the file") from None


def image_ref(root: Path, name: str, source_key: str) -> tuple[ImageRef | None, str | None] | Reject:
    """Resolve an image name below root: (ref, None) when present, (None, why) when missing,
    a Reject when the name is unsafe."""
    try:
        p = resolve_inside(root, name)
        if p.is_file():
            return ImageRef(path=p), None
        if p.exists():
            return Reject(source_key, f"not a regular file: {p}")
    except PathEscape as exc:
        return Reject(source_key, f"unsafe file name: {exc}")
    except OSError as exc:   # a name the file system cannot hold (over 255 bytes a part), a denied folder
        return Reject(source_key, f"unusable file name {_short(name)}: {exc.strerror or exc}")
    return None, f"image file missing: {p}"


def _short(name: str, keep: int = 80) -> str:
    """A name fit for a message: a 4,000-character name would drown the reason."""
    if len(name) <= keep:
        return repr(name)
    return f"{name[:keep]!r}… ({len(name.encode('utf-8', 'replace'))} bytes)"


def record_with_image(root: Path, name: str, source_key: str, **fields) -> SourceRecord | Reject:
    resolved = image_ref(root, name, source_key)
    if isinstance(resolved, Reject):
        return resolved
    ref, missing = resolved
    return SourceRecord(source_key=source_key, image=ref, missing=missing, **fields)


def read_image_map(path: Path) -> dict[str, str]:
    """TSV `name<TAB>path[<TAB>...]`; a first row whose path column is no image name is a header."""
    mapping: dict[str, str] = {}
    for n, line, err in read_lines(path):
        if err:
            raise InputError(err, where=str(path))
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            raise InputError(f"line {n} of {path.name} has no TAB-separated path column", where=str(path),
                             fix="each line: <name in the annotation>\\t<path below --images>")
        if n == 1 and "." not in cols[1]:
            continue  # header
        if cols[0] in mapping:
            raise InputError(f"{cols[0]!r} is mapped twice (line {n})", where=str(path))
        mapping[cols[0]] = cols[1]
    return mapping


def image_folder(root: Path, options: IngestOptions, names: tuple[str, ...]) -> tuple[Path, list[str]]:
    """The image folder: --images, else the first standard name present below root (else the first
    standard name, so that every image reads as missing), with a note when it does not exist."""
    folder = options.images or find_first(root, names) or root / names[0]
    notes = [] if folder.is_dir() else [f"image folder {folder} does not exist: every image is missing"]
    return folder, notes


def load_image_map(options: IngestOptions) -> dict[str, str] | None:
    if options.image_map is None:
        return None
    if not options.image_map.is_file():
        raise InputError("--image-map file not found", where=str(options.image_map),
                         fix="pass the TSV that maps annotation names to paths below --images "
                             "(name<TAB>path per line)")
    return read_image_map(options.image_map)


def mapped_record(image_root: Path, name: str, source_key: str, mapping: dict[str, str] | None,
                  **fields) -> SourceRecord | Reject:
    """record_with_image for a name as the annotation gives it, through the --image-map when given."""
    if mapping is None:
        return record_with_image(image_root, name, source_key, **fields)
    target = mapping.get(name)
    if target is None:
        return Reject(source_key, f"{name} is not in the --image-map file")
    fields["meta"] = {**fields.get("meta", {}), "image_path": target}
    return record_with_image(image_root, target, source_key, **fields)


SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val", "training": "train", "testing": "test"}


def canonical_split(name: str | None) -> str | None:
    """train/val/test as the rest of clipstore names them ('validation' -> 'val')."""
    if name is None:
        return None
    lowered = name.strip().lower()
    return SPLIT_ALIASES.get(lowered, lowered)
