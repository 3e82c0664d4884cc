"""Fashion formats: the real Fashion Product Images CSV set, and Fashion200k / FashionGen / Polyvore
fixtures written in their distributed raw formats (their files are not available here)."""

from __future__ import annotations

import json

import pytest

from clipstore.ingest.pipeline import ingest
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.sql import query

from fixtures import write_fashion200k, write_fashiongen, write_image, write_polyvore


def rows(store, sql, *params):
    return query(store, sql, list(params)).to_pylist()


def run(store, fmt, path, name, **kw):
    return ingest(store, fmt, path, name=name, workers=1, progress=False, **kw)


def test_fashion_products_real_csv(store, shared_data):
    art = run(store, "fashion_products", shared_data / "fashion_product_images_small", "products")
    assert art.counts["samples"] == 685 and art.counts["images"] == 685 and art.counts["captions"] == 685
    assert art.counts["rejects"] == 0
    classes = rows(store, "SELECT class, class_index FROM classes ORDER BY class_index")
    assert len(classes) == 75 and classes[0] == {"class": "Accessory Gift Set", "class_index": 0}
    sample = rows(store, "SELECT s.class, s.meta, c.raw, i.width, i.format FROM samples s "
                         "JOIN captions c ON c.sample_id = s.sample_id JOIN images i ON i.image_id = s.image_id "
                         "WHERE s.source_key = '10000'")
    assert len(sample) == 1
    assert sample[0]["raw"] == "Palm Tree Girls Sp Jace Sko White Skirts"
    assert sample[0]["class"] == "Skirts" and sample[0]["width"] == 224 and sample[0]["format"] == "JPEG"
    meta = json.loads(sample[0]["meta"])
    assert meta["gender"] == "Women" and meta["baseColour"] == "White" and meta["subCategory"] == "Bottomwear"


def test_fashion_products_kaggle_styles_csv_with_unquoted_commas(store, tmp_path):
    (tmp_path / "styles.csv").write_text(
        "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"
        "1,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt\n"
        "2,Women,Apparel,Topwear,Tops,Red,Summer,2012,Casual,Lady Top, Red, Sleeveless\n"
        '3,Men,Footwear,Shoes,Casual Shoes,Black,Winter,2013,Casual,"Quoted, Black Shoes"\n'
        "4,Men,Footwear\n", encoding="utf-8")
    for i in (1, 2, 3):
        write_image(tmp_path / "images" / f"{i}.jpg", seed=i)
    art = run(store, "fashion_products", tmp_path, "styles")
    captions = {r["source_key"]: r["raw"] for r in rows(store, "SELECT source_key, raw FROM captions")}
    assert captions == {"1": "Turtle Check Men Navy Blue Shirt", "2": "Lady Top, Red, Sleeveless",
                        "3": "Quoted, Black Shoes"}
    assert rows(store, "SELECT source_key, reason FROM rejects") == [
        {"source_key": "styles.csv:5", "reason": "row 5 of styles.csv has 3 fields, the header has 10"}]
    assert any("unquoted commas" in n for n in art.stats["notes"])


def test_fashion200k_label_files(store, tmp_path):
    root = write_fashion200k(tmp_path / "fashion200k")
    art = run(store, "fashion200k", root, "f200k")
    assert art.counts["samples"] == 6 and art.counts["captions"] == 6
    assert rows(store, "SELECT class, class_index, name FROM classes ORDER BY class_index") == [
        {"class": c, "class_index": i, "name": c}
        for i, c in enumerate(["dresses", "jackets", "pants", "skirts", "tops"])]
    sample = rows(store, "SELECT split, class, meta FROM samples WHERE source_key = ?",
                  "women/dresses/casual_and_day_dresses/51727804/51727804_1.jpeg")[0]
    assert sample["split"] == "train" and sample["class"] == "dresses"
    assert json.loads(sample["meta"]) == {"product_id": "51727804", "subcategory": "casual and day dresses",
                                          "detection_score": 0.707136, "label_file": "dress_train_detect_all.txt"}
    # two images of one product: two samples sharing the product id and the description
    same = rows(store, "SELECT count(*) AS n FROM samples WHERE json_extract_string(meta, '$.product_id') = '51727804'")
    assert same == [{"n": 2}]
    assert rows(store, "SELECT split, count(*) AS n FROM samples GROUP BY split ORDER BY split") == [
        {"split": "test", "n": 3}, {"split": "train", "n": 3}]
    rejects = {r["source_key"]: r["reason"] for r in rows(store, "SELECT source_key, reason FROM rejects")}
    assert rejects["women/dresses/cocktail_and_party_dresses/56140312/56140312_0.jpeg"].startswith("image file missing")
    assert "expected `image path<TAB>score<TAB>description`" in rejects["top_test_detect_all.txt:2"]
    # PATH may be one label file: the root is the folder above labels/
    art = run(store, "fashion200k", root / "labels" / "jacket_train_detect_all.txt", "jackets")
    assert art.counts["samples"] == 1


def test_fashiongen_h5(store, tmp_path):
    root = write_fashiongen(tmp_path / "fashiongen")
    art = run(store, "fashiongen", root, "fgen")
    assert art.counts["samples"] == 6 and art.counts["images"] == 6 and art.counts["rejects"] == 0
    assert [r["class"] for r in rows(store, "SELECT class FROM classes ORDER BY class_index")] == [
        "jackets & coats", "jeans", "jewelry", "sneakers", "tops"]
    caps = {r["source_key"]: r["raw"] for r in rows(store, "SELECT source_key, raw FROM captions")}
    assert caps["fashiongen_256_256_train:0"] == "Black Wool Coat. Long sleeve wool coat in black. Notched lapel."
    assert caps["fashiongen_256_256_train:2"] == "Café Sneakers. Low-top sneakers in café brown."      # Latin-1
    assert caps["fashiongen_256_256_train:3"] == "White T-Shirt. Crewneck t-shirt in white écru cotton."  # UTF-8
    sample = rows(store, "SELECT s.split, s.class, s.meta, i.width, i.height, i.format FROM samples s "
                         "JOIN images i USING (image_id) WHERE s.source_key = 'fashiongen_256_256_validation:1'")[0]
    assert (sample["split"], sample["class"], sample["width"], sample["height"]) == ("val", "jewelry", 256, 256)
    assert sample["format"] == "PNG"
    meta = json.loads(sample["meta"])
    assert meta["product_id"] == 202 and meta["subcategory"] == "rings" and meta["row"] == 1
    # the two rows of product 101 hold different pixels: two images
    assert rows(store, "SELECT count(DISTINCT image_id) AS n FROM samples "
                       "WHERE json_extract(meta, '$.product_id') = 101") == [{"n": 2}]


def test_fashiongen_without_required_dataset_is_refused(store, tmp_path):
    import h5py
    import numpy as np
    with h5py.File(tmp_path / "fashiongen_256_256_train.h5", "w") as h5:
        h5["input_image"] = np.zeros((1, 4, 4, 3), dtype=np.uint8)
        h5["input_name"] = np.array([[b"x"]])
    with pytest.raises(InputError, match="lacks dataset\\(s\\) input_description"):
        run(store, "fashiongen", tmp_path, "broken")


def test_polyvore_info_and_metadata(store, tmp_path):
    root = write_polyvore(tmp_path / "polyvore")
    art = run(store, "polyvore", root, "poly")
    assert art.counts["samples"] == 3
    caps = {r["source_key"]: r["raw"] for r in rows(store, "SELECT source_key, raw FROM captions")}
    assert caps == {"154249722": "Ray-Ban sunglasses.Classic aviator",   # title + "." + description
                    "188977857": "Topshop skinny jeans",                # empty description: the title alone
                    "120705695": "Gold hoop earrings.14k gold"}
    assert rows(store, "SELECT class, class_index FROM classes ORDER BY class_index") == [
        {"class": "bottoms", "class_index": 0}, {"class": "jewellery", "class_index": 1},
        {"class": "sunglasses", "class_index": 2}]
    assert rows(store, "SELECT source_key, split, class FROM samples ORDER BY source_index") == [
        {"source_key": "154249722", "split": "train", "class": "sunglasses"},
        {"source_key": "188977857", "split": "train", "class": "bottoms"},
        {"source_key": "120705695", "split": "val", "class": "jewellery"}]
    rejects = {r["source_key"]: r["reason"] for r in rows(store, "SELECT source_key, reason FROM rejects")}
    assert rejects["199285568"].startswith("image file missing")
    assert rejects["111"] == "train_info.json[3] 'images' is None, expected one image file name"
    meta = json.loads(rows(store, "SELECT meta FROM samples WHERE source_key = '154249722'")[0]["meta"])
    assert meta["attributes_id"] == [3, 17] and meta["category_id"] == "44"
