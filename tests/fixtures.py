"""Writers of small corpora in the exact raw formats their distributors use, for the formats whose
real files are not available here (Fashion200k, FashionGen, Polyvore, the RS classification sets,
JSON lines, Hugging Face folders). Every image is a real, decodable file with distinct pixels."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from clipstore.ingest.adapters.imagefolder import PRESETS


def image_array(seed: int, size: int = 16) -> np.ndarray:
    """A distinct, smooth RGB image (so no two fixtures share bytes)."""
    y, x = np.mgrid[0:size, 0:size]
    r = (x * 7 + seed * 37) % 256
    g = (y * 11 + seed * 53) % 256
    b = ((x + y) * 5 + seed * 91) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def image_bytes(seed: int, fmt: str = "JPEG", size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image_array(seed, size)).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_image(path: Path, seed: int, size: int = 16) -> Path:
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(seed, fmt, size))
    return path


# --------------------------------------------------------------------------- remote-sensing class folders

def write_class_folders(root: Path, classes, per_class: int = 1, ext: str = ".jpg", seed: int = 0) -> int:
    """root/<class>/<class>_<k><ext>, like WHU-RS19/AID/RESISC45 (RSSCN7 names files a1.jpg...).
    Returns the number of images written."""
    n = 0
    for c in classes:
        for k in range(per_class):
            write_image(root / c / f"{c.lower()}_{k + 1}{ext}", seed=seed + n)
            n += 1
    return n


def write_preset_folders(root: Path, preset: str, per_class: int = 1) -> int:
    p = PRESETS[preset]
    return write_class_folders(root, p.classes, per_class=per_class, ext=p.extension)


# --------------------------------------------------------------------------- Fashion200k

FASHION200K_ITEMS = [
    # (label file, image path, score, description, written on disk)
    ("dress_train_detect_all.txt", "women/dresses/casual_and_day_dresses/51727804/51727804_0.jpeg", "0.818417",
     "multicolor floral print dress", True),
    ("dress_train_detect_all.txt", "women/dresses/casual_and_day_dresses/51727804/51727804_1.jpeg", "0.707136",
     "multicolor floral print dress", True),
    ("dress_train_detect_all.txt", "women/dresses/cocktail_and_party_dresses/56140312/56140312_0.jpeg", "0.9",
     "black lace cocktail dress", False),
    ("jacket_train_detect_all.txt", "women/jackets/leather_jackets/60981024/60981024_0.jpeg", "0.95",
     "brown leather biker jacket", True),
    ("pants_test_detect_all.txt", "women/pants/wide-leg_and_palazzo_pants/70091341/70091341_2.jpeg", "0.61",
     "beige wide-leg trousers", True),
    ("skirt_test_detect_all.txt", "women/skirts/mini_skirts/81232411/81232411_0.jpeg", "0.77",
     "red pleated mini skirt", True),
    ("top_test_detect_all.txt", "women/tops/blouses/90011223/90011223_0.jpeg", "0.83",
     "white silk blouse", True),
]


def write_fashion200k(root: Path) -> Path:
    """root/labels/<cat>_<split>_detect_all.txt (image path TAB score TAB description) and the
    cropped images root/women/<category>/<sub-category>/<product id>/<id>_<k>.jpeg; one listed image
    is absent (as in the real download) and top_test has a malformed line."""
    labels = root / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {f"{c}_{s}_detect_all.txt": [] for c in ("dress", "jacket", "pants", "skirt", "top")
                                   for s in ("train", "test")}
    for i, (label_file, image_path, score, description, on_disk) in enumerate(FASHION200K_ITEMS):
        lines[label_file].append(f"{image_path}\t{score}\t{description}")
        if on_disk:
            write_image(root / image_path, seed=100 + i)
    lines["top_test_detect_all.txt"].append("women/tops/blouses/90011224/90011224_0.jpeg 0.5 no tabs here")
    for name, rows in lines.items():
        (labels / name).write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return root


# --------------------------------------------------------------------------- FashionGen

FASHIONGEN_ROWS = {
    "train": [
        # (name, description, category, sub-category, product id)
        (b"Black Wool Coat", b"Long sleeve wool coat in black. Notched lapel.", b"JACKETS & COATS", b"COATS", 101),
        (b"Black Wool Coat", b"Long sleeve wool coat in black. Notched lapel.", b"JACKETS & COATS", b"COATS", 101),
        (b"Caf\xe9 Sneakers", b"Low-top sneakers in caf\xe9 brown.", b"SNEAKERS", b"LOW TOP SNEAKERS", 102),
        (b"White T-Shirt", b"Crewneck t-shirt in white \xc3\xa9cru cotton.", b"TOPS", b"T-SHIRTS", 103),
    ],
    "validation": [
        (b"Blue Jeans", b"Slim-fit denim jeans in blue.", b"JEANS", b"SLIM JEANS", 201),
        (b"Silver Ring", b"Sterling silver ring.", b"Jewelry", b"RINGS", 202),
    ],
}


def write_fashiongen(root: Path, size: int = 256) -> Path:
    """fashiongen_256_256_{train,validation}.h5 as released: input_image N×256×256×3 uint8 and
    N×1 byte-string datasets (one name in Latin-1, one description in UTF-8)."""
    import h5py
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in FASHIONGEN_ROWS.items():
        with h5py.File(root / f"fashiongen_256_256_{split}.h5", "w") as h5:
            n = len(rows)
            h5["input_image"] = np.stack([image_array(300 + 10 * (split == "validation") + i, size)
                                          for i in range(n)])
            for k, column in enumerate(("input_name", "input_description", "input_category",
                                        "input_subcategory")):
                values = [r[k] for r in rows]
                width = max(len(v) for v in values)
                h5[column] = np.array(values, dtype=f"S{width}").reshape(n, 1)
            h5["input_productID"] = np.array([r[4] for r in rows], dtype=np.int64).reshape(n, 1)
            h5["index"] = np.arange(n, dtype=np.int64).reshape(n, 1)
    return root


# --------------------------------------------------------------------------- Polyvore

POLYVORE_ITEMS = {
    "train": [
        {"images": "154249722.jpg", "id": 154249722, "title": "Ray-Ban sunglasses", "description": "Classic aviator",
         "attributes_id": [3, 17]},
        {"images": "188977857.jpg", "id": 188977857, "title": "Topshop skinny jeans", "description": "",
         "attributes_id": []},
        {"images": "199285568.jpg", "id": 199285568, "title": "Leather ankle boots",
         "description": "Block heel, side zip", "attributes_id": [8]},
        {"id": 111, "title": "no image", "description": "an item without its image name"},
    ],
    "valid": [
        {"images": "120705695.jpg", "id": 120705695, "title": "Gold hoop earrings", "description": "14k gold",
         "attributes_id": [1]},
    ],
}
POLYVORE_METADATA = {
    "154249722": {"semantic_category": "sunglasses", "category_id": "44", "title": "Ray-Ban sunglasses"},
    "188977857": {"semantic_category": "bottoms", "category_id": "27", "title": "Topshop skinny jeans"},
    "120705695": {"semantic_category": "jewellery", "category_id": "55", "title": "Gold hoop earrings"},
    # 199285568 deliberately absent: an item without metadata has no class
}


def write_polyvore(root: Path) -> Path:
    """<split>_info.json, polyvore_item_metadata.json and images/<id>.jpg (the boots' image absent)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, items in POLYVORE_ITEMS.items():
        (root / f"{split}_info.json").write_text(json.dumps(items), encoding="utf-8")
        for i, item in enumerate(items):
            if "images" in item and item["id"] != 199285568:
                write_image(root / "images" / item["images"], seed=500 + i + 10 * (split == "valid"))
    (root / "polyvore_item_metadata.json").write_text(json.dumps(POLYVORE_METADATA), encoding="utf-8")
    return root


# --------------------------------------------------------------------------- JSON lines

def write_jsonl(root: Path) -> Path:
    """train.jsonl (one with a malformed line, a merged repeat, a missing image) and val.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(("a.jpg", "b.png", "c.jpg", "d.jpg")):
        write_image(root / "img" / name, seed=700 + i)
    train = [
        json.dumps({"image": "img/a.jpg", "caption": "a red square", "class": "red"}),
        json.dumps({"image": "img/b.png", "captions": ["a green square", "green again"], "class": "green", "id": 7}),
        '{"image": "img/c.jpg", "caption": "broken line"',
        json.dumps({"image": "img/a.jpg", "caption": "a red square once more", "class": "red"}),
        json.dumps({"image": "img/missing.jpg", "caption": "no such file", "class": "red"}),
        json.dumps({"caption": "no image key"}),
        "",
    ]
    (root / "train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
    val = [json.dumps({"image": "img/d.jpg", "captions": ["a blue square"], "class": "blue"}),
           json.dumps({"image": "img/c.jpg", "caption": "explicit split wins", "split": "test", "class": "blue"})]
    (root / "val.jsonl").write_text("\n".join(val) + "\n", encoding="utf-8")
    return root


# --------------------------------------------------------------------------- Hugging Face folders

HF_CLASS_NAMES = ["cat", "dog", "bird"]


def _hf_image_type():
    import pyarrow as pa
    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _hf_features_meta(features: dict) -> dict[bytes, bytes]:
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def write_hf_save_to_disk(root: Path) -> Path:
    """A DatasetDict as `save_to_disk` writes it: dataset_dict.json and, per split, Arrow IPC stream
    data files, state.json and dataset_info.json; image = struct{bytes, path}, text, ClassLabel."""
    import pyarrow as pa
    features = {"image": {"_type": "Image"}, "text": {"dtype": "string", "_type": "Value"},
                "label": {"names": HF_CLASS_NAMES, "_type": "ClassLabel"}}
    splits = {"train": [("a cat on a mat", 0), ("a dog in a park", 1), ("a bird on a wire", 2)],
              "test": [("another dog", 1)]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}), encoding="utf-8")
    for s, (split, rows) in enumerate(splits.items()):
        folder = root / split
        folder.mkdir()
        schema = pa.schema([("image", _hf_image_type()), ("text", pa.string()), ("label", pa.int64())],
                           metadata=_hf_features_meta(features))
        images = [{"bytes": image_bytes(900 + 10 * s + i, "PNG"), "path": f"{split}_{i}.png"} for i in range(len(rows))]
        table = pa.table({"image": images, "text": [r[0] for r in rows], "label": [r[1] for r in rows]}, schema=schema)
        name = "data-00000-of-00001.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(table, max_chunksize=2)
        (folder / "state.json").write_text(json.dumps({
            "_data_files": [{"filename": name}], "_fingerprint": f"fixture{s}", "_format_columns": None,
            "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": split}),
            encoding="utf-8")
        (folder / "dataset_info.json").write_text(json.dumps({"features": features, "splits": {}}), encoding="utf-8")
    return root


def write_hf_parquet(root: Path) -> Path:
    """A Hub-style Parquet folder: data/{train,test}-00000-of-00001.parquet with image struct (bytes,
    or only a path to a file beside the data), a `captions` list column and a string class."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    (root / "data").mkdir(parents=True, exist_ok=True)
    write_image(root / "files" / "on_disk.jpg", seed=950)
    schema = pa.schema([("filename", pa.string()), ("image", _hf_image_type()),
                        ("captions", pa.list_(pa.string())), ("class", pa.string())])
    train = {"filename": ["t0.jpg", "t1.jpg", "t2.jpg"],
             "image": [{"bytes": image_bytes(960), "path": "t0.jpg"},
                       {"bytes": None, "path": "files/on_disk.jpg"},
                       {"bytes": None, "path": "files/gone.jpg"}],
             "captions": [["harbour with boats", "many boats"], ["a lone tree"], ["no image here"]],
             "class": ["harbour", "forest", "forest"]}
    test = {"filename": ["v0.jpg"], "image": [{"bytes": image_bytes(961), "path": None}],
            "captions": [["a beach"]], "class": ["beach"]}
    pq.write_table(pa.table(train, schema=schema), str(root / "data" / "train-00000-of-00001.parquet"))
    pq.write_table(pa.table(test, schema=schema), str(root / "data" / "test-00000-of-00001.parquet"))
    return root


# --------------------------------------------------------------------------- small projects and stores

PROJECT_CLASSES = ["beach", "forest", "harbor"]


def write_tiny_project(root: Path, project_toml: str, n: int, captions) -> Path:
    """A project folder: clipstore.toml, a Karpathy corpus of n generated images under raw/tiny
    (splits train, train, val, test in turn; `captions(i, cls)` gives an image's captions) and
    two images per class under raw/cls."""
    from conftest import write_karpathy
    raw = root / "raw"
    entries = []
    for i in range(n):
        cls = PROJECT_CLASSES[i % 3]
        write_image(raw / "tiny" / "images" / f"{i}.png", seed=i)
        entries.append({"filename": f"{i}.png", "split": ["train", "train", "val", "test"][i % 4],
                        "captions": captions(i, cls)})
    write_karpathy(raw / "tiny", entries)
    write_class_folders(raw / "cls", PROJECT_CLASSES, per_class=2, seed=100)
    (root / "clipstore.toml").write_text(project_toml)
    return root


def ucm_split_store(root: Path, shared: Path):
    """Real UCM_captions (2,100 entries, 210 images on disk, the rest kept caption-only) in shards
    of 200 entries, and a 30% labeled split `u30` over it."""
    from clipstore.ingest.pipeline import ingest
    from clipstore.ingest.splits import make_split
    from clipstore.warehouse.store import Store
    store = Store(root)
    ingest(store, "ucm_captions", shared / "ucm_captions", images=shared / "ucmerced_landuse",
           image_map=shared / "ucmerced_landuse" / "ucm_captions_filename_map.tsv", keep_missing=True,
           shard_size=200, workers=1, progress=False)
    make_split(store, "u30", corpora=["ucm_captions"], labeled_ratio=0.3, seed=0)
    return store


# --------------------------------------------------------------------------- pseudo-label stores

def synth_split_store(root: Path, n_images: int = 120, labeled_ratio: float = 0.35, size: int = 32):
    """A store holding the synthetic corpus (`clipstore synth`: n_images captioned scenes of 10
    classes, 5 captions each, train/val/test 80/10/10) as corpus `synth` and a split `s` of its
    train images (labeled_ratio labeled, seed 0). Returns (store, synth folder)."""
    from clipstore.ingest.pipeline import ingest
    from clipstore.ingest.splits import make_split
    from clipstore.ingest.synth import write_synthetic
    from clipstore.warehouse.store import Store
    folder = root / "synth"
    write_synthetic(folder, seed=0, n_images=n_images, size=size)
    store = Store(root / "store")
    ingest(store, "karpathy", folder / "captions", name="synth", workers=1, progress=False)
    make_split(store, "s", corpora=["synth"], labeled_ratio=labeled_ratio, seed=0)
    return store, folder


def corpus_images(store, corpus: str) -> list[dict]:
    """(image_id, sample_id, class) of a corpus's images, in source order."""
    from clipstore.warehouse.sql import query
    return query(store, 'SELECT image_id, sample_id, "class" FROM samples WHERE corpus = $c AND has_image '
                        "ORDER BY source_index", {"c": corpus}).to_pylist()


def write_embeddings(store, corpus: str, vectors: dict, *, fingerprint: str, model: str = "handmade",
                     name: str | None = None, unit: bool = False):
    """An image embeddings artifact written by hand, as embed would: `vectors` maps image_id ->
    vector (every image of the corpus it covers); `unit=True` stores them as given (NaN kept),
    else they are L2-normalised (and NaN refused) like model outputs. Returns the artifact."""
    import numpy as np
    import pyarrow.parquet as pq

    from clipstore.features.vectors import EMBEDDING_TABLES, commit_unit_vectors, commit_vectors
    params = {"fingerprint": fingerprint, "tower": "image", "modality": "image", "corpus": corpus, "vocab": None,
              "views": None}
    with store.writing():
        builder = store.produce(kind="embeddings", name=name or f"{corpus}.image.{model}", stage="embed", version=1,
                                params=params, tables=EMBEDDING_TABLES, reuse=False)
        held = set()
        for _, _table, path in builder.committed_parts("embedding_items"):   # grows like embed: new items only
            held |= set(pq.read_table(str(path), columns=["item_id"]).column("item_id").to_pylist())
        rows, matrix = [], []
        for img in corpus_images(store, corpus):
            if img["image_id"] in vectors and img["image_id"] not in held:
                rows.append({"item_id": img["image_id"], "modality": "image", "view": 0, "corpus": corpus,
                             "sample_id": img["sample_id"], "text": None})
                matrix.append(np.asarray(vectors[img["image_id"]], dtype=np.float32))
        if rows:
            matrix = np.stack(matrix)
            part = builder.next_part()
            if unit:
                commit_unit_vectors(builder, part, rows, matrix.astype(np.float16), np.ones(len(rows), np.float32),
                                    model=model, fingerprint=fingerprint)
            else:
                commit_vectors(builder, part, rows, matrix, model=model, fingerprint=fingerprint)
        dim = len(next(iter(vectors.values())))
        return builder.finish({"vectors": len(held) + len(rows), "dim": dim},
                              {"fingerprint": fingerprint, "model": model, "model_fingerprint": f"{fingerprint}-model"},
                              noop=not rows)


def class_vectors(store, corpus: str, *, shuffle_seed: int | None = None) -> dict:
    """image_id -> the one-hot vector of its class (classes in sorted order); with `shuffle_seed`,
    the same vectors dealt to the images in a seeded random order (class information destroyed)."""
    import numpy as np
    images = corpus_images(store, corpus)
    classes = sorted({i["class"] for i in images})
    onehot = [np.eye(len(classes), dtype=np.float32)[classes.index(i["class"])] for i in images]
    if shuffle_seed is not None:
        onehot = [onehot[j] for j in np.random.default_rng(shuffle_seed).permutation(len(onehot))]
    return {i["image_id"]: v for i, v in zip(images, onehot)}
