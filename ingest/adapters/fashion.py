"""Fashion corpora, in the raw layouts the public S-CLIP code reads (alinlab/s-clip custom/data.py).

- fashion200k: `labels/<category>_<split>_detect_all.txt`, lines `image path \\t detection score \\t
  description`, image paths relative to the root (`women/dresses/casual_and_day_dresses/51727804/
  51727804_0.jpeg`): category = path component 1, sub-category = component 2, product id = component 3.
- fashiongen: `fashiongen_256_256_<split>.h5` (.hdf5 in the S-CLIP code) with `input_image` N×256×256×3
  uint8 and N×1 byte-string columns; caption = name + ". " + description; class = category, lower-cased.
- polyvore: `<split>_info.json` (items with images/id/title/description), `polyvore_item_metadata.json`
  (item id -> semantic_category), images in `images/`; caption = title + "." + description.
- fashion_products: Myntra "Fashion Product Images" (`captions.csv` or Kaggle `styles.csv`, images
  `images/<id>.jpg`); caption = productDisplayName, class = articleType."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from clipstore.ingest.adapters.base import (Adapter, IngestOptions, Source, canonical_split, image_folder,
                                            load_json, locate_annotation, read_lines, read_text, record_with_image,
                                            require_path)
from clipstore.ingest.records import ImageRef, Reject, SourceRecord
from clipstore.warehouse.errors import InputError


def sorted_classes(labels) -> list[tuple[str, str]]:
    return [(c, c) for c in sorted({label for label in labels if label is not None})]


def join_title_description(title: str, description: str, separator: str) -> str:
    """title + separator + description as the public code composes them; one part alone when the
    other is empty, so no caption is a bare separator."""
    title, description = title.strip(), description.strip()
    if title and description:
        return title + separator + description
    return title or description


# --------------------------------------------------------------------------- fashion200k

LABEL_FILE = re.compile(r"^(?P<category>.+)_(?P<split>[a-z]+)_detect_all\.txt$")


class Fashion200kAdapter(Adapter):
    format = "fashion200k"
    summary = "Fashion200k (Han et al. 2017): labels/*_detect_all.txt + women/... images"
    layout = ("ROOT/labels/{dress,jacket,pants,skirt,top}_{train,test}_detect_all.txt (lines `image path<TAB>"
              "score<TAB>description`; the files may also sit in ROOT itself) and images at ROOT/<image path> "
              "(women/<category>/<sub-category>/<product id>/<file>); PATH may be one label file; --images DIR "
              "is the folder the image paths are relative to")

    def open(self, path: Path, options: IngestOptions) -> Source:
        require_path(path, "fashion200k corpus", self.layout)
        if path.is_file():
            label_files = [path]
            root = path.parent.parent if path.parent.name == "labels" else path.parent
        else:
            root = path
            label_dir = path / "labels" if (path / "labels").is_dir() else path
            label_files = sorted(p for p in label_dir.glob("*_detect_all.txt") if LABEL_FILE.match(p.name))
        if not label_files:
            raise InputError(f"no *_detect_all.txt label files in {path}", where=str(path),
                             fix=f"expected layout: {self.layout}")
        image_root = options.images or root
        notes = [] if image_root.is_dir() else [f"image folder {image_root} does not exist: every image is missing"]
        records = [r for f in label_files for r in self._parse(f, image_root)]
        classes = [(c, c.replace("_", " ")) for c, _ in sorted_classes(
            r.label for r in records if isinstance(r, SourceRecord))]
        return Source(records=records, files=label_files, image_root=image_root, classes=classes, notes=notes)

    def _parse(self, label_file: Path, image_root: Path):
        m = LABEL_FILE.match(label_file.name)
        split = canonical_split(m.group("split")) if m else None
        for n, line, err in read_lines(label_file):
            where = f"{label_file.name}:{n}"
            if err:
                yield Reject(where, err)
                continue
            if not line.strip():
                continue
            fields = line.split("\t", 2)
            if len(fields) < 3:
                yield Reject(where, f"line {n} of {label_file.name} has {len(fields)} TAB-separated field(s), "
                                    "expected `image path<TAB>score<TAB>description`")
                continue
            image_path, score, description = (f.strip() for f in fields)
            parts = image_path.split("/")
            if len(parts) < 5:
                yield Reject(image_path or where,
                             f"image path {image_path!r} ({where}) is not "
                             "women/<category>/<sub-category>/<product id>/<file>")
                continue
            meta = {"product_id": parts[3], "subcategory": parts[2].replace("_", " "),
                    "detection_score": _float_or_none(score), "label_file": label_file.name}
            yield record_with_image(image_root, image_path, image_path, captions=[description] if description else [],
                                    split=split, label=parts[1], meta=meta)


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# --------------------------------------------------------------------------- fashiongen

H5_NAME = re.compile(r"^fashiongen_.*_(?P<split>[a-z]+)\.(h5|hdf5)$")
REQUIRED_H5 = ("input_image", "input_name", "input_description")
TEXT_H5 = ("input_name", "input_description", "input_category", "input_subcategory", "input_productID")
H5_CHUNK = 8192  # rows of text read at once: bounded memory on the 260k-row train file


class FashionGenAdapter(Adapter):
    format = "fashiongen"
    summary = "FashionGen (Rostamzadeh et al. 2018): fashiongen_256_256_{train,validation}.h5"
    layout = ("ROOT/fashiongen_256_256_{train,validation}.h5 (or .hdf5) with datasets input_image (N×H×W×3 uint8), "
              "input_name, input_description and optionally input_category, input_subcategory, input_productID "
              "(N×1 byte strings); PATH may be one .h5 file")

    def open(self, path: Path, options: IngestOptions) -> Source:
        require_path(path, "fashiongen corpus", self.layout)
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if H5_NAME.match(p.name))
        if not files:
            raise InputError(f"no fashiongen_*_<split>.h5 files in {path}", where=str(path),
                             fix=f"expected layout: {self.layout}")
        import h5py
        tables = []
        for file in files:
            try:
                with h5py.File(file, "r") as h5:
                    tables.append((file, self._check(file, h5), self._read_text(h5)))
            except OSError as exc:
                raise InputError(f"{file.name} is not a readable HDF5 file ({exc})", where=str(file),
                                 fix="re-download the file") from None
        classes = sorted_classes(_lower(c) for _, _, text in tables for c in text.get("input_category", []))
        notes = [f"{file.name}: no input_category dataset, so no classes" for file, _, text in tables
                 if "input_category" not in text]
        return Source(records=self._records(tables), files=files, image_root=None, classes=classes, notes=notes)

    def _check(self, file: Path, h5) -> int:
        missing = [name for name in REQUIRED_H5 if name not in h5]
        if missing:
            raise InputError(f"{file.name} lacks dataset(s) {', '.join(missing)} (it has {', '.join(sorted(h5))})",
                             where=str(file), fix=f"expected layout: {self.layout}")
        images = h5["input_image"]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype.name != "uint8":
            raise InputError(f"{file.name}: input_image is {images.dtype}{list(images.shape)}, "
                             "expected N×H×W×3 uint8",
                             where=str(file), fix="use the FashionGen HDF5 release (images as uint8 RGB arrays)")
        return images.shape[0]

    def _read_text(self, h5) -> dict[str, list]:
        text = {}
        for name in TEXT_H5:
            if name in h5:
                dataset = h5[name]
                text[name] = [_scalar(v) for start in range(0, dataset.shape[0], H5_CHUNK)
                              for v in dataset[start:start + H5_CHUNK]]
        return text

    def _records(self, tables):
        for file, n_rows, text in tables:
            m = H5_NAME.match(file.name)
            split = canonical_split(m.group("split")) if m else None
            for row in range(n_rows):
                key = f"{file.stem}:{row}"
                short = [name for name in REQUIRED_H5[1:] if row >= len(text[name])]
                if short:
                    yield Reject(key, f"row {row} of {file.name} has no {' or '.join(short)} "
                                      f"(those datasets are shorter than input_image)")
                    continue
                name, encoding_n = decode_text(text["input_name"][row])
                description, encoding_d = decode_text(text["input_description"][row])
                caption = join_title_description(name, description, ". ")
                meta = {"row": row, "file": file.name, "product_id": _value(text, "input_productID", row),
                        "subcategory": _lower(_value(text, "input_subcategory", row)),
                        "name": name, "description": description}
                if "latin-1" in (encoding_n, encoding_d):
                    meta["text_encoding"] = "latin-1"
                yield SourceRecord(source_key=key, image=ImageRef(h5=(str(file), "input_image", row)),
                                   captions=[caption] if caption else [], split=split,
                                   label=_lower(_value(text, "input_category", row)), meta=meta)


def _scalar(value):
    """An element of an N×1 (or N) dataset as bytes or a Python number."""
    while hasattr(value, "shape") and getattr(value, "ndim", 0) > 0 and value.shape[0] == 1:
        value = value[0]
    return value.item() if hasattr(value, "item") and not isinstance(value, bytes) else value


def _value(text: dict[str, list], name: str, row: int):
    column = text.get(name)
    if column is None or row >= len(column):
        return None
    value = column[row]
    return decode_text(value)[0] if isinstance(value, bytes) else value


def decode_text(value) -> tuple[str, str]:
    """(text, encoding): UTF-8 when the bytes are valid UTF-8, else Latin-1 (which the S-CLIP code
    always uses, and which turns UTF-8 multi-byte characters into mojibake)."""
    if isinstance(value, str):
        return value, "str"
    try:
        return value.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return value.decode("latin-1"), "latin-1"


def _lower(value) -> str | None:
    if value is None:
        return None
    text = decode_text(value)[0] if isinstance(value, bytes) else str(value)
    return text.strip().lower() or None


# --------------------------------------------------------------------------- polyvore

METADATA_JSON = "polyvore_item_metadata.json"


class PolyvoreAdapter(Adapter):
    format = "polyvore"
    summary = "Polyvore Outfits items: <split>_info.json + polyvore_item_metadata.json + images/"
    layout = (f"ROOT/<split>_info.json (a list of {{images, id, title, description, ...}}), ROOT/{METADATA_JSON} "
              "(item id -> {semantic_category, ...}; optional, gives the classes) and ROOT/images/<images>; "
              "PATH may be one info JSON; --images DIR overrides the image folder")

    def open(self, path: Path, options: IngestOptions) -> Source:
        require_path(path, "polyvore corpus", self.layout)
        root = path if path.is_dir() else path.parent
        info_files = [path] if path.is_file() else sorted(root.glob("*_info.json"))
        if not info_files:
            raise InputError(f"no <split>_info.json in {root}", where=str(root), fix=f"expected layout: {self.layout}")
        image_root, notes = image_folder(root, options, ("images",))
        metadata_path = root / METADATA_JSON
        metadata = load_json(metadata_path) if metadata_path.is_file() else None
        if metadata is None:
            notes.append(f"no {METADATA_JSON} in {root}: items have no class")
        elif not isinstance(metadata, dict):
            raise InputError(f"{METADATA_JSON} is not an object keyed by item id", where=str(metadata_path),
                             fix="use the Polyvore Outfits polyvore_item_metadata.json")
        records = [r for f in info_files for r in self._parse(f, image_root, metadata)]
        unclassed = sum(1 for r in records if isinstance(r, SourceRecord) and r.label is None)
        if metadata is not None and unclassed:
            notes.append(f"{unclassed} item(s) have no semantic_category in {METADATA_JSON}: no class")
        files = info_files + ([metadata_path] if metadata is not None else [])
        return Source(records=records, files=files, image_root=image_root,
                      classes=sorted_classes(r.label for r in records if isinstance(r, SourceRecord)), notes=notes)

    def _parse(self, info: Path, image_root: Path, metadata: dict | None):
        items = load_json(info)
        if not isinstance(items, list):
            raise InputError(f"{info.name} is not a JSON list of items", where=str(info),
                             fix="expected [{\"images\", \"id\", \"title\", \"description\"}, ...]")
        split = canonical_split(info.name[: -len("_info.json")]) if info.name.endswith("_info.json") else None
        for i, item in enumerate(items):
            where = f"{info.name}[{i}]"
            if not isinstance(item, dict):
                yield Reject(where, f"{where} is a {type(item).__name__}, not an object")
                continue
            if item.get("id") is None:
                yield Reject(where, f"{where} has no 'id'")
                continue
            key = str(item["id"])
            image = item.get("images")
            if isinstance(image, list) and len(image) == 1:
                image = image[0]
            if not isinstance(image, str) or not image:
                yield Reject(key, f"{where} 'images' is {image!r}, expected one image file name")
                continue
            title, description = item.get("title") or "", item.get("description") or ""
            if not isinstance(title, str) or not isinstance(description, str):
                yield Reject(key, f"{where} 'title' or 'description' is not a string")
                continue
            caption = join_title_description(title, description, ".")
            item_meta = metadata.get(key) if metadata is not None else None
            label = item_meta.get("semantic_category") if isinstance(item_meta, dict) else None
            meta = {"title": title, "description": description, "info_file": info.name}
            for field in ("attributes_id", "category_id"):
                if field in item:
                    meta[field] = item[field]
            if isinstance(item_meta, dict) and "category_id" in item_meta:
                meta["category_id"] = item_meta["category_id"]
            yield record_with_image(image_root, image, key, captions=[caption] if caption else [], split=split,
                                    label=label if isinstance(label, str) else None, meta=meta)


# --------------------------------------------------------------------------- fashion_products

PRODUCT_CSVS = ("captions.csv", "styles.csv")
PRODUCT_ATTRIBUTES = ("gender", "masterCategory", "subCategory", "baseColour", "season", "year", "usage")


class FashionProductsAdapter(Adapter):
    format = "fashion_products"
    summary = "Fashion Product Images (Myntra/Kaggle): captions.csv or styles.csv + images/<id>.jpg"
    layout = ("ROOT/captions.csv (filename,id,gender,masterCategory,subCategory,articleType,baseColour,season,year,"
              "usage,productDisplayName) or the Kaggle ROOT/styles.csv (same columns without filename), images "
              "ROOT/<filename> or ROOT/images/<id>.jpg; PATH may be the CSV; --images DIR: images by base name there")

    def open(self, path: Path, options: IngestOptions) -> Source:
        csv_path, root = locate_annotation(path, PRODUCT_CSVS, "fashion_products corpus", self.layout)
        rows = list(csv.reader(io.StringIO(read_text(csv_path, "utf-8-sig"), newline="")))
        if not rows:
            raise InputError(f"{csv_path.name} is empty", where=str(csv_path), fix=f"expected layout: {self.layout}")
        header = [h.strip() for h in rows[0]]
        needed = [c for c in ("id", "articleType", "productDisplayName") if c not in header]
        if needed:
            raise InputError(f"{csv_path.name} has no column(s) {', '.join(needed)} (header: {', '.join(header)})",
                             where=str(csv_path), fix=f"expected layout: {self.layout}")
        by_filename = "filename" in header and options.images is None
        folder, notes = (root, []) if by_filename else image_folder(root, options, ("images",))
        records = list(self._records(csv_path, header, rows[1:], folder, by_filename))
        repaired = sum(1 for r in records if isinstance(r, SourceRecord) and r.meta.get("repaired_commas"))
        if repaired:
            notes.append(f"{repaired} row(s) had unquoted commas in productDisplayName (the last column): "
                         "the extra fields were joined back into it")
        return Source(records=records, files=[csv_path], image_root=folder, notes=notes,
                      classes=sorted_classes(r.label for r in records if isinstance(r, SourceRecord)))

    def _records(self, csv_path: Path, header: list[str], rows: list[list[str]], folder: Path, by_filename: bool):
        last = len(header) - 1
        for n, values in enumerate(rows, start=2):
            where = f"{csv_path.name}:{n}"
            if not any(v.strip() for v in values):
                continue
            repaired = len(values) > len(header) and header[last] == "productDisplayName"
            if repaired:  # the Kaggle styles.csv leaves commas in the display name unquoted
                values = values[:last] + [",".join(values[last:])]
            if len(values) != len(header):
                yield Reject(where, f"row {n} of {csv_path.name} has {len(values)} fields, "
                                    f"the header has {len(header)}")
                continue
            row = dict(zip(header, (v.strip() for v in values)))
            if not row["id"]:
                yield Reject(where, f"row {n} of {csv_path.name} has no id")
                continue
            if by_filename and row.get("filename"):
                name = row["filename"]
            else:
                name = Path(row["filename"]).name if row.get("filename") else f"{row['id']}.jpg"
            meta = {k: row[k] for k in PRODUCT_ATTRIBUTES if k in row}
            meta["row"] = n
            if repaired:
                meta["repaired_commas"] = True
            caption = row["productDisplayName"]
            yield record_with_image(folder, name, row["id"], captions=[caption] if caption else [],
                                    label=row["articleType"] or None, meta=meta)


FASHION200K = Fashion200kAdapter()
FASHIONGEN = FashionGenAdapter()
POLYVORE = PolyvoreAdapter()
FASHION_PRODUCTS = FashionProductsAdapter()
