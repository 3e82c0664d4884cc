"""Generic image-text sources.

- jsonl: one JSON object per line, `{"image": path, "caption": str | "captions": [str], "split"?,
  "class"?}`; a folder of *.jsonl files is read file by file (a file named train/val/test gives the
  split of lines that have none). Lines naming the same image are merged into one entry.
- hf: a local Hugging Face dataset (`save_to_disk`: Arrow IPC stream files, `state.json`,
  `dataset_info.json`; a DatasetDict has one such folder per split) or a folder of Parquet files,
  read with pyarrow alone. Which column is what follows COLUMN_RULES, overridable by a
  `clipstore_columns.json` file in the dataset folder."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from clipstore.ingest.adapters.base import (Adapter, IngestOptions, Source, canonical_split, load_json, read_lines,
                                            record_with_image, require_path)
from clipstore.ingest.records import ImageRef, Reject, SourceRecord
from clipstore.warehouse.errors import InputError

SPLIT_NAMES = ("train", "val", "valid", "validation", "dev", "test")


# --------------------------------------------------------------------------- jsonl

class JsonlAdapter(Adapter):
    format = "jsonl"
    summary = "JSON lines: {\"image\", \"caption\" | \"captions\", \"split\"?, \"class\"?} per line"
    layout = ("PATH = a .jsonl file or a folder of *.jsonl files; each line {\"image\": path relative to the file's "
              "folder, \"caption\": str or \"captions\": [str], optional \"split\" and \"class\"}; lines naming the "
              "same image are merged; --images DIR overrides the image folder")

    def open(self, path: Path, options: IngestOptions) -> Source:
        require_path(path, "jsonl source", self.layout)
        files = [path] if path.is_file() else sorted(path.glob("*.jsonl"))
        if not files:
            raise InputError(f"no *.jsonl file in {path}", where=str(path), fix=f"expected layout: {self.layout}")
        entries: dict[str, dict] = {}
        items: list = []  # entry dicts and Rejects, in source order
        for file in files:
            default_split = canonical_split(file.stem) if file.stem.lower() in SPLIT_NAMES else None
            for item in parse_jsonl(file, default_split):
                if isinstance(item, Reject):
                    items.append(item)
                    continue
                merged = entries.get(item["image"])
                if merged is None:
                    entries[item["image"]] = item
                    items.append(item)
                elif (merged["split"], merged["label"]) != (item["split"], item["label"]):
                    items.append(Reject(f"{item['where']}", f"{item['where']} names {item['image']} again with split "
                                                            f"{item['split']!r}/class {item['label']!r}, but "
                                                            f"{merged['where']} says {merged['split']!r}/"
                                                            f"{merged['label']!r}: the first is kept"))
                else:
                    merged["captions"].extend(item["captions"])
                    merged["meta"].setdefault("merged_lines", []).append(item["where"])
        image_root = options.images
        notes = [] if image_root is None or image_root.is_dir() else \
            [f"image folder {image_root} does not exist: every image is missing"]
        classes = sorted({e["label"] for e in entries.values() if e["label"] is not None})
        return Source(records=self._records(items, image_root), files=files,
                      image_root=image_root or (path if path.is_dir() else path.parent),
                      classes=[(c, c) for c in classes], notes=notes)

    def _records(self, items: list, image_root: Path | None):
        for item in items:
            if isinstance(item, Reject):
                yield item
                continue
            yield record_with_image(image_root or item["folder"], item["image"], item["image"],
                                    captions=item["captions"], split=item["split"], label=item["label"],
                                    meta=item["meta"])


def parse_jsonl(file: Path, default_split: str | None) -> Iterator[dict | Reject]:
    for n, line, err in read_lines(file):
        where = f"{file.name}:{n}"
        if err:
            yield Reject(where, err)
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Reject(where, f"line {n} of {file.name} is malformed JSON: {exc.msg} at column {exc.colno}")
            continue
        problem = _jsonl_problem(obj)
        if problem:
            yield Reject(where, f"line {n} of {file.name}: {problem}")
            continue
        captions = list(obj.get("captions") or [])
        if isinstance(obj.get("caption"), str) and obj["caption"] not in captions:
            captions.insert(0, obj["caption"])
        meta = {k: v for k, v in obj.items() if k not in ("image", "caption", "captions", "split", "class")}
        meta["line"] = n
        split = obj.get("split")
        yield {"image": obj["image"], "captions": captions, "where": where, "folder": file.parent, "meta": meta,
               "split": canonical_split(split) if isinstance(split, str) else default_split,
               "label": obj.get("class")}


def _jsonl_problem(obj) -> str | None:
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not an object"
    if not isinstance(obj.get("image"), str) or not obj["image"]:
        return "no \"image\" path string"
    captions = obj.get("captions")
    if captions is not None and not (isinstance(captions, list) and all(isinstance(c, str) for c in captions)):
        return "\"captions\" is not a list of strings"
    if obj.get("caption") is not None and not isinstance(obj["caption"], str):
        return "\"caption\" is not a string"
    for field in ("split", "class"):
        if obj.get(field) is not None and not isinstance(obj[field], str):
            return f"\"{field}\" is not a string"
    return None


# --------------------------------------------------------------------------- hf

COLUMNS_FILE = "clipstore_columns.json"
# Column roles, first match wins; a clipstore_columns.json {"image": .., "captions": [..], "class": ..,
# "split": .., "key": ..} in the dataset folder overrides any of them.
COLUMN_RULES = {
    "image": ("image", "img", "jpg", "png", "image_bytes"),
    "captions": ("captions", "caption", "text", "sentences"),   # every present one, in this order
    "class": ("label", "class", "category"),
    "split": ("split",),
    "key": ("__key__", "key", "filename", "file_name", "image_id", "id"),
}
NUMBERED_CAPTION = re.compile(r"^(caption|sentence|text)_?\d+$")   # caption_1 ... caption_5


class HfAdapter(Adapter):
    format = "hf"
    summary = "a local Hugging Face dataset (save_to_disk Arrow) or a folder of Parquet files"
    layout = ("PATH = a save_to_disk folder (state.json + dataset_info.json + *.arrow; a DatasetDict: "
              "dataset_dict.json + one such folder per split) or a folder of *.parquet files (split from "
              "train-*.parquet or a train/ folder); columns: image = image|img|jpg|png (struct{bytes,path} or "
              "bytes), captions = captions|caption|text|sentences|caption_<n>, class = label|class|category "
              f"(ClassLabel names from the features), split, key = __key__|key|filename|file_name|image_id|id; "
              f"{COLUMNS_FILE} overrides the column choice; --images DIR resolves images stored as paths")

    def open(self, path: Path, options: IngestOptions) -> Source:
        require_path(path, "hf dataset folder", self.layout)
        if not path.is_dir():
            path = path.parent
        parts = data_files(path)
        if not parts:
            raise InputError(f"no Hugging Face dataset (state.json + *.arrow) or *.parquet files in {path}",
                             where=str(path), fix=f"expected layout: {self.layout}")
        schema, features = read_schema(parts[0][0])
        override = load_json(path / COLUMNS_FILE) if (path / COLUMNS_FILE).is_file() else {}
        columns = choose_columns(schema, override, path)
        names = class_names(features, columns.get("class"))
        if names is None and columns.get("class"):
            names = sorted({str(v) for file, _ in parts for v in read_column(file, columns["class"]) if v is not None},
                           key=_natural)
        notes = []
        if columns.get("key") and not _unique(parts, columns["key"]):
            notes.append(f"column {columns['key']!r} repeats values: keys are <data file>:<row> instead")
            columns["meta"].append(columns["key"])
            columns["key"] = None
        if not columns.get("captions"):
            notes.append(f"no caption column (looked for {', '.join(COLUMN_RULES['captions'])}): "
                         "entries have no captions")
        notes.append("columns: " + ", ".join(f"{role}={value}" for role, value in columns.items() if value))
        image_root = options.images or path
        return Source(records=self._records(parts, columns, names, path, image_root, features),
                      files=[f for f, _ in parts], image_root=image_root,
                      classes=[(c, c) for c in names] if names is not None else None, notes=notes)

    def _records(self, parts, columns: dict, names: list[str] | None, root: Path, image_root: Path, features):
        label_names = names if _is_class_label(features, columns.get("class")) else None
        roles = [columns[r] for r in ("image", "class", "split", "key") if columns.get(r)]
        wanted = list(dict.fromkeys([*roles, *columns["captions"], *columns["meta"]]))
        for file, split in parts:
            rel = file.relative_to(root).as_posix()
            row = 0
            for batch in iter_batches(file, wanted):
                for values in batch.to_pylist():
                    yield self._record(values, columns, label_names, rel, row, split, image_root)
                    row += 1

    def _record(self, values: dict, columns: dict, label_names, rel: str, row: int, split: str | None,
                image_root: Path) -> SourceRecord | Reject:
        key_value = values.get(columns["key"]) if columns.get("key") else None
        key = str(key_value) if key_value not in (None, "") else f"{rel}:{row}"
        captions = []
        for column in columns["captions"]:
            captions.extend(_texts(values.get(column)))
        label = values.get(columns["class"]) if columns.get("class") else None
        if label == -1 and label_names is not None:
            label = None  # the datasets library's "no label"
        if label is not None and label_names is not None:
            if not isinstance(label, int) or not 0 <= label < len(label_names):
                return Reject(key, f"{rel} row {row}: class {label!r} is not an index of the {len(label_names)} "
                                   "ClassLabel names")
            label = label_names[label]
        meta = {"file": rel, "row": row, **{c: values.get(c) for c in columns["meta"]}}
        row_split = values.get(columns["split"]) if columns.get("split") else None
        fields = dict(captions=captions, split=canonical_split(row_split) if isinstance(row_split, str) else split,
                      label=None if label is None else str(label), meta=meta)
        image = values.get(columns["image"]) if columns.get("image") else None
        data, image_path = _image_value(image)
        if image_path:
            meta["image_path"] = image_path
        if data:
            return SourceRecord(source_key=key, image=ImageRef(data=data), **fields)
        if image_path:
            return record_with_image(image_root, image_path, key, **fields)
        return SourceRecord(source_key=key, image=None, missing=f"{rel} row {row} has no image bytes or path",
                            **fields)


def data_files(root: Path) -> list[tuple[Path, str | None]]:
    """(data file, split) in a stable order: DatasetDict splits, a single save_to_disk folder, or Parquet."""
    dict_json = root / "dataset_dict.json"
    if dict_json.is_file():
        doc = load_json(dict_json)
        splits = doc.get("splits") if isinstance(doc, dict) else None
        if not isinstance(splits, list):
            raise InputError("dataset_dict.json has no 'splits' list", where=str(dict_json),
                             fix="re-save the DatasetDict with save_to_disk")
        return [part for s in splits for part in _arrow_files(root / str(s), canonical_split(str(s)))]
    if (root / "state.json").is_file():
        return _arrow_files(root, None)
    return [(p, _split_from_path(p.relative_to(root))) for p in sorted(root.rglob("*.parquet"))]


def _arrow_files(folder: Path, split: str | None) -> list[tuple[Path, str | None]]:
    state_path = folder / "state.json"
    if not state_path.is_file():
        raise InputError(f"no state.json in {folder}", where=str(folder),
                         fix="point PATH at a folder written by Dataset.save_to_disk")
    state = load_json(state_path)
    files = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(files, list) or not files:
        raise InputError("state.json lists no _data_files", where=str(state_path),
                         fix="re-save the dataset with save_to_disk")
    split = split or (canonical_split(state["_split"]) if isinstance(state.get("_split"), str) else None)
    out = []
    for entry in files:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not (folder / name).is_file():
            raise InputError(f"state.json names a data file that is not there: {name!r}", where=str(folder),
                             fix="copy the complete dataset folder")
        out.append((folder / name, split))
    return out


def _split_from_path(rel: Path) -> str | None:
    """train-00000-of-00001.parquet, data/train/0000.parquet, or train.parquet."""
    candidates = [rel.stem.split("-")[0], *reversed(rel.parts[:-1])]
    for name in candidates:
        if name.lower() in SPLIT_NAMES:
            return canonical_split(name)
    return None


def _is_parquet(file: Path) -> bool:
    return file.suffix == ".parquet"


def read_schema(file: Path):
    """(Arrow schema, Hugging Face features dict or None) of one data file."""
    if _is_parquet(file):
        import pyarrow.parquet as pq
        schema = pq.read_schema(str(file))
    else:
        with _open_arrow(file) as reader:
            schema = reader.schema
    meta = schema.metadata or {}
    features = None
    if b"huggingface" in meta:
        try:
            doc = json.loads(meta[b"huggingface"])
            features = doc.get("info", {}).get("features") or doc.get("features")
        except (ValueError, AttributeError):
            features = None
    info = file.parent / "dataset_info.json"
    if features is None and info.is_file():
        doc = load_json(info)
        features = doc.get("features") if isinstance(doc, dict) else None
    return schema, features


class _open_arrow:
    """An IPC stream reader (what save_to_disk writes), falling back to the IPC file format."""

    def __init__(self, file: Path):
        import pyarrow as pa
        import pyarrow.ipc as ipc
        self.source = pa.memory_map(str(file))
        try:
            self.reader = ipc.open_stream(self.source)
            self.batches = lambda: iter(self.reader)
        except pa.ArrowInvalid:
            self.source.seek(0)
            try:
                file_reader = ipc.open_file(self.source)
            except pa.ArrowInvalid as exc:
                self.source.close()
                raise InputError(f"{file.name} is not an Arrow IPC file ({exc})", where=str(file),
                                 fix="re-save the dataset with save_to_disk") from None
            self.reader = file_reader
            self.batches = lambda: (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))

    @property
    def schema(self):
        return self.reader.schema

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.source.close()


def iter_batches(file: Path, columns: list[str]):
    if _is_parquet(file):
        import pyarrow.parquet as pq
        yield from pq.ParquetFile(str(file)).iter_batches(batch_size=256, columns=columns)
        return
    with _open_arrow(file) as reader:
        for batch in reader.batches():
            yield batch.select(columns)


def read_column(file: Path, column: str) -> list:
    return [v for batch in iter_batches(file, [column]) for v in batch.column(0).to_pylist()]


def choose_columns(schema, override: dict, root: Path) -> dict:
    """Role -> column name (captions: a list of names; meta: other plain columns kept in meta)."""
    import pyarrow as pa
    if not isinstance(override, dict):
        raise InputError(f"{COLUMNS_FILE} is not an object", where=str(root / COLUMNS_FILE),
                         fix='e.g. {"image": "img", "captions": ["caption_en"], "class": "label"}')
    names = list(schema.names)
    for role, value in override.items():
        wanted = value if isinstance(value, list) else [value]
        unknown = [v for v in wanted if v not in names]
        if role not in COLUMN_RULES or unknown:
            raise InputError(f"{COLUMNS_FILE}: role {role!r} -> {value!r} does not match the data "
                             f"(roles: {', '.join(COLUMN_RULES)}; columns: {', '.join(names)})",
                             where=str(root / COLUMNS_FILE), fix="name existing columns for known roles")
    chosen = {}
    for role, candidates in COLUMN_RULES.items():
        if role in override:
            value = override[role]
            chosen[role] = (value if isinstance(value, list) else [value]) if role == "captions" else value
            continue
        present = [c for c in candidates if c in names]
        if role == "captions":
            chosen[role] = present + [c for c in names if NUMBERED_CAPTION.match(c) and c not in present]
        else:
            chosen[role] = present[0] if present else None
    if chosen["image"] is None:
        chosen["image"] = next((f.name for f in schema if _is_image_type(f.type)), None)
    used = {chosen[r] for r in ("image", "class", "split", "key")} | set(chosen["captions"])
    plain = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_floating,
             pa.types.is_boolean)
    chosen["meta"] = [f.name for f in schema if f.name not in used and any(t(f.type) for t in plain)]
    return chosen


def _natural(name: str):
    """Integer class values in numeric order ('2' before '10'), names alphabetically after them."""
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def _unique(parts, column: str) -> bool:
    seen = set()
    for file, _ in parts:
        for value in read_column(file, column):
            if value in (None, "") or value in seen:
                return False
            seen.add(value)
    return True


def _is_image_type(t) -> bool:
    import pyarrow as pa
    if pa.types.is_struct(t):
        return {t.field(i).name for i in range(t.num_fields)} >= {"bytes", "path"}
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_class_label(features, column: str | None) -> bool:
    spec = features.get(column) if isinstance(features, dict) and column else None
    return isinstance(spec, dict) and spec.get("_type") == "ClassLabel" and isinstance(spec.get("names"), list)


def class_names(features, column: str | None) -> list[str] | None:
    """ClassLabel names in index order, as the dataset defines them."""
    return [str(n) for n in features[column]["names"]] if _is_class_label(features, column) else None


def _texts(value) -> list[str]:
    """Caption strings of a cell: a string, a list of strings, or Karpathy-style [{raw: ...}]."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        out = []
        for v in value:
            text = v.get("raw") if isinstance(v, dict) else v
            if isinstance(text, str) and text.strip():
                out.append(text)
        return out
    return []


def _image_value(value) -> tuple[bytes | None, str | None]:
    """(bytes, path) of an image cell: struct{bytes, path}, raw bytes, or a path string."""
    if isinstance(value, dict):
        return value.get("bytes") or None, value.get("path") or None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value) or None, None
    if isinstance(value, str):
        return None, value or None
    return None, None


JSONL = JsonlAdapter()
HF = HfAdapter()
