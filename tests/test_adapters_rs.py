"""Remote-sensing formats on their real raw files (Sydney, RSITMD, RSICD, UC Merced) and on class
folders written with the real class names of WHU-RS19, RSSCN7, AID and RESISC45."""

from __future__ import annotations

import shutil

import pytest

from clipstore.ingest.adapters.imagefolder import PRESETS
from clipstore.ingest.pipeline import ingest
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.sql import query

from fixtures import write_class_folders, write_image, write_preset_folders


def rows(store, sql, *params):
    return query(store, sql, list(params)).to_pylist()


def scalar(store, sql, *params):
    return next(iter(rows(store, sql, *params)[0].values()))


def run(store, fmt, path, name, **kw):
    return ingest(store, fmt, path, name=name, workers=1, progress=False, **kw)


# --------------------------------------------------------------------------- Sydney: text files vs JSON

def test_sydney_txt_and_karpathy_json_agree(store, shared_data):
    root = shared_data / "sydney_captions"
    run(store, "sydney_captions", root, "syd_json", keep_missing=True)
    art = run(store, "sydney_txt", root, "syd_txt", keep_missing=True)
    assert art.counts["samples"] == 613 and art.counts["captions"] == 3065 and art.counts["images"] == 9

    def captions(corpus):
        return rows(store, "SELECT source_key, ordinal, text FROM captions WHERE corpus = ? "
                           "ORDER BY source_key, ordinal", corpus)

    txt, js = captions("syd_txt"), captions("syd_json")
    assert len(txt) == 3065 and txt == js   # same keys, same order, same text once normalised

    def samples(corpus):
        return rows(store, "SELECT source_key, split, image_id FROM samples WHERE corpus = ? ORDER BY source_key",
                    corpus)

    assert samples("syd_txt") == samples("syd_json")
    splits = {r["split"]: r["n"] for r in rows(store, "SELECT split, count(*) AS n FROM samples WHERE corpus = ? "
                                                      "GROUP BY split", "syd_txt")}
    assert splits == {"train": 497, "val": 58, "test": 58}
    # raw text is verbatim: lower-case and without the final period, as the upstream file has it
    raw = rows(store, "SELECT raw FROM captions WHERE corpus = 'syd_txt' AND source_key = '1.tif' AND ordinal = 0")
    assert raw == [{"raw": "a residential area with houses arranged neatly"}]
    # 363.tif: the JSON's copied image-level sentids do not matter to the text files
    assert scalar(store, "SELECT n_captions FROM samples WHERE corpus = 'syd_txt' AND source_key = '363.tif'") == 5


def test_sydney_txt_rejects_bad_lines_and_ambiguous_splits(store, shared_data, tmp_path):
    src = shared_data / "sydney_captions"
    root = tmp_path / "sydney"
    root.mkdir()
    lines = (src / "descriptions_SIDNEY.txt").read_bytes().split(b"\r\n")[:15]   # images 1-3, CRLF kept
    lines.insert(5, b"no number here")
    (root / "descriptions_SIDNEY.txt").write_bytes(b"\r\n".join(lines) + b"\r\n")
    (root / "filenames_train.txt").write_text("1.tif\n2.tif\n")
    (root / "filenames_val.txt").write_text("2.tif\n3.tif\n4.tif\n")
    (root / "images").mkdir()
    shutil.copy(src / "imgs" / "1.tif", root / "images" / "1.tif")
    art = run(store, "sydney_txt", root, "syd_small")
    rejects = {r["source_key"]: r["reason"] for r in rows(store, "SELECT source_key, reason FROM rejects")}
    assert "not `<image number> <caption>`" in rejects["descriptions_SIDNEY.txt:6"]
    assert "filenames_train.txt and filenames_val.txt" in rejects["2.tif"]
    assert rejects["3.tif"].startswith("image file missing")
    assert rejects["4.tif"].startswith("image file missing")     # listed, no captions, no image
    assert art.counts["samples"] == 1
    assert rows(store, "SELECT source_key, split, n_captions FROM samples") == [
        {"source_key": "1.tif", "split": "train", "n_captions": 5}]
    assert any("have no line in descriptions_SIDNEY.txt" in n for n in art.stats["notes"])


# --------------------------------------------------------------------------- RSITMD caption lists

def test_rsitmd_real_lists(store, shared_data):
    art = run(store, "rsitmd", shared_data / "rsitmd", "rsitmd", keep_missing=True)
    # 4,291 train images x 5 lines (a name per image) + 452 test images x 5 lines (a name per line);
    # 4 train images have five blank lines each: kept as images without captions
    assert art.counts["samples"] == 4743 and art.counts["images"] == 0
    assert art.counts["captions"] == 21455 + 2260 - 20
    splits = {r["split"]: r["n"] for r in rows(store, "SELECT split, count(*) AS n FROM samples GROUP BY split")}
    assert splits == {"train": 4291, "test": 452}
    blank = rows(store, "SELECT source_key FROM samples WHERE n_captions = 0 ORDER BY source_key")
    assert [r["source_key"] for r in blank] == ["mountain_2378.tif", "railwaystation_3254.tif",
                                                "storagetanks_4367.tif", "viaduct_4635.tif"]
    boat = rows(store, "SELECT raw FROM captions WHERE source_key = 'boat_0.tif' ORDER BY ordinal")
    assert len(boat) == 5
    assert boat[0]["raw"] == "Two large ships loaded with cargo were moored on both sides of the gray port."
    first_train = rows(store, "SELECT split, n_captions FROM samples WHERE source_key = 'baseballfield_452.tif'")
    assert first_train == [{"split": "train", "n_captions": 5}]
    assert any("20 blank" in n for n in art.stats["notes"])


def test_rsitmd_lists_that_do_not_align_are_refused(store, shared_data, tmp_path):
    (tmp_path / "train_caps.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "train_filename.txt").write_text("a.tif\nb.tif\n")
    with pytest.raises(InputError, match="neither one file name per caption"):
        run(store, "rsitmd", tmp_path, "bad")
    (tmp_path / "train_filename.txt").unlink()
    with pytest.raises(InputError, match="no matching train_filename.txt"):
        run(store, "rsitmd", tmp_path, "bad")


# --------------------------------------------------------------------------- RSICD: JSON + class lists

def test_rsicd_json_and_txtclasses(store, shared_data):
    root = shared_data / "rsicd"
    run(store, "rsicd", root, "rsicd")
    art = run(store, "rsicd_cls", root, "rsicd_cls")
    assert art.counts["samples"] == 13 and art.counts["rejects"] == 10921 - 13
    classes = rows(store, "SELECT class, class_index, name FROM classes WHERE corpus = 'rsicd_cls' "
                          "ORDER BY class_index")
    assert len(classes) == 31
    assert classes[0] == {"class": "Airport", "class_index": 0, "name": "Airport"}
    assert classes[-1]["class"] == "playfields"   # sorted as the public code sorts the file names
    # the classification samples are the caption corpus's images: same keys, same bytes
    joined = rows(store, "SELECT c.source_key, c.class, c.split FROM samples c JOIN samples r "
                         "ON c.source_key = r.source_key AND c.image_id = r.image_id "
                         "WHERE c.corpus = 'rsicd_cls' AND r.corpus = 'rsicd' ORDER BY c.source_key")
    assert len(joined) == 13
    classes_of = {r["source_key"]: r["class"] for r in joined}
    assert classes_of == {**{f"{k:05d}.jpg": "playfields" for k in (1, 2, 3, 4, 5, 8, 9, 10)},
                          "00006.jpg": "Bridge", "00007.jpg": "Bridge", "00011.jpg": "StorageTanks",
                          "square_146.jpg": "Square", "stadium_1.jpg": "Stadium"}
    val = scalar(store, "SELECT count(*) FROM (SELECT split FROM samples WHERE corpus = 'rsicd_cls' "
                        "UNION ALL SELECT split FROM rejects WHERE corpus = 'rsicd_cls') WHERE split = 'val'")
    assert val == 1094


def test_rsicd_cls_image_in_two_class_files(store, shared_data, tmp_path):
    (tmp_path / "txtclasses_rsicd").mkdir()
    (tmp_path / "txtclasses_rsicd" / "Stadium.txt").write_text("stadium_1.jpg\nsquare_146.jpg\n")
    (tmp_path / "txtclasses_rsicd" / "Square.txt").write_text("square_146.jpg\n")
    (tmp_path / "rsicd_karpathy_split.tsv").write_text("filename\tsplit\nstadium_1.jpg\tval\nsquare_146.jpg\ttrain\n")
    run(store, "rsicd_cls", tmp_path, "cls", images=shared_data / "rsicd" / "RSICD_images")
    assert rows(store, "SELECT source_key, class, split FROM samples ORDER BY source_key") == [
        {"source_key": "square_146.jpg", "class": "Square", "split": "train"},   # Square.txt is read first
        {"source_key": "stadium_1.jpg", "class": "Stadium", "split": "val"}]
    rejects = rows(store, "SELECT source_key, reason FROM rejects")
    assert len(rejects) == 1 and rejects[0]["source_key"] == "square_146.jpg@Stadium.txt"
    assert "listed in txtclasses_rsicd/Square.txt:1 and again in txtclasses_rsicd/Stadium.txt:2" \
        in rejects[0]["reason"]


# --------------------------------------------------------------------------- class folders

def test_ucm_cls_real_folders(store, shared_data):
    art = run(store, "imagefolder", shared_data / "ucmerced_landuse", "ucm_cls")   # preset chosen by name
    assert art.counts["samples"] == 210 and art.counts["rejects"] == 0
    classes = rows(store, "SELECT class, name FROM classes ORDER BY class_index")
    assert [c["class"] for c in classes] == list(PRESETS["ucm_cls"].classes)
    assert all(c["class"] == c["name"] for c in classes)
    sample = rows(store, "SELECT s.class, s.class_index, i.width, i.height, i.format FROM samples s "
                         "JOIN images i USING (image_id) WHERE s.source_key = 'airplane/airplane00.tif'")
    assert sample == [{"class": "airplane", "class_index": 1, "width": 256, "height": 256, "format": "TIFF"}]
    per_class = rows(store, "SELECT class, count(*) AS n FROM samples GROUP BY class")
    assert len(per_class) == 21 and {r["n"] for r in per_class} == {10}
    assert art.stats["notes"] == []


@pytest.mark.parametrize("preset", ["whu_rs19", "rsscn7", "aid", "resisc45"])
def test_presets_check_the_real_class_sets(store, tmp_path, preset):
    p = PRESETS[preset]
    root = tmp_path / preset
    write_preset_folders(root, preset)
    dropped = p.classes[-1]
    shutil.rmtree(root / dropped)
    write_class_folders(root, ["zz_extra"], seed=50)
    first = root / p.classes[0]
    (first / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (first / "readme.txt").write_text("not an image")

    art = run(store, "imagefolder", root, preset)
    classes = rows(store, "SELECT class, class_index, name FROM classes ORDER BY class_index")
    expected = sorted([*p.classes, "zz_extra"])
    assert [c["class"] for c in classes] == expected
    assert [c["class_index"] for c in classes] == list(range(len(expected)))
    if preset == "rsscn7":
        assert [c["name"] for c in classes][:7] == ["Grass", "Field", "Industry", "RiverLake", "Forest", "Resident",
                                                    "Parking"]
    else:
        assert all(c["class"] == c["name"] for c in classes)
    assert art.counts["samples"] == len(p.classes)   # one image per class, one class dropped, one extra
    rejects = {r["source_key"]: r["reason"] for r in rows(store, "SELECT source_key, reason FROM rejects")}
    assert set(rejects) == {f"{p.classes[0]}/Thumbs.db", f"{p.classes[0]}/readme.txt"}
    assert all(reason.startswith("not an image file") for reason in rejects.values())
    notes = " | ".join(art.stats["notes"])
    assert f"missing: {dropped}" in notes and "not in the preset: zz_extra" in notes
    # the dropped class keeps its place in the class table, with no sample
    assert scalar(store, "SELECT count(*) FROM samples WHERE class = ?", dropped) == 0
    key = f"{p.classes[0]}/{p.classes[0].lower()}_1{p.extension}"
    assert rows(store, "SELECT class, class_index FROM samples WHERE source_key = ?", key) == [
        {"class": p.classes[0], "class_index": expected.index(p.classes[0])}]


def test_imagefolder_without_preset_and_explicit_preset(store, tmp_path):
    root = tmp_path / "folders"
    write_class_folders(root, ["b_cls", "a_cls"], per_class=2, ext=".png")
    write_image(root / "a_cls" / "nested" / "deep.png", seed=77)
    (root / "stray.jpg").write_bytes(b"\xff\xd8")
    art = run(store, "imagefolder", root, "plain")
    assert rows(store, "SELECT class, class_index FROM classes ORDER BY class_index") == [
        {"class": "a_cls", "class_index": 0}, {"class": "b_cls", "class_index": 1}]
    assert art.counts["samples"] == 5
    assert scalar(store, "SELECT class FROM samples WHERE source_key = 'a_cls/nested/deep.png'") == "a_cls"
    assert rows(store, "SELECT source_key, reason FROM rejects") == [
        {"source_key": "stray.jpg", "reason": f"stray.jpg is not inside a class folder of {root}"}]

    aid = tmp_path / "AID"
    write_preset_folders(aid, "aid")
    art = run(store, "imagefolder", aid, "my_aid", preset="aid")
    assert art.counts["samples"] == 30 and art.stats["notes"] == []
