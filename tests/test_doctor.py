"""`clipstore doctor`: layout checks on real data and broken layouts, without reading image bytes."""

from __future__ import annotations

import shutil

import pytest

from clipstore.ingest.adapters import ADAPTERS
from clipstore.ingest.doctor import doctor

from fixtures import write_image, write_preset_folders


def test_doctor_sydney_txt_real(shared_data):
    report = doctor("sydney_txt", shared_data / "sydney_captions")
    assert report.ok
    assert (report.records, report.captions, report.images_present, len(report.missing)) == (613, 3065, 9, 604)
    assert dict(report.splits) == {"train": 497, "val": 58, "test": 58}
    text = report.render()
    assert "9 present, 604 missing (e.g. 10.tif, 11.tif, 12.tif, 13.tif, 14.tif)" in text
    assert "READY" in text and "--keep-missing" in text


def test_doctor_rsitmd_says_images_are_lacking(shared_data):
    report = doctor("rsitmd", shared_data / "rsitmd")
    assert not report.ok
    assert (report.records, report.captions, report.without_captions) == (4743, 23695, 4)
    text = report.render()
    assert "NOT READY" in text
    assert f"image folder:  {shared_data / 'rsitmd' / 'images'}  (does not exist)" in text
    assert "no image of the 4743 entries is present" in text and "--images DIR" in text
    assert "expected layout:" in text


def test_doctor_rsicd_cls_counts_classes(shared_data):
    report = doctor("rsicd_cls", shared_data / "rsicd")
    assert report.ok and report.images_present == 13 and len(report.classes) == 31
    assert report.labels["playfields"] + sum(n for c, n in report.labels.items() if c != "playfields") == 10921
    assert report.splits["val"] == 1094


@pytest.mark.parametrize("fmt", sorted(ADAPTERS))
def test_doctor_on_an_empty_folder_explains_the_layout(tmp_path, fmt):
    report = doctor(fmt, tmp_path)
    assert not report.ok
    text = report.render()
    assert "NOT READY" in text and "expected layout:" in text
    assert ADAPTERS[fmt].layout.split()[0] in text


def test_doctor_missing_path(tmp_path):
    report = doctor("polyvore", tmp_path / "nowhere")
    assert not report.ok and "not found" in report.render()


def test_doctor_guesses_the_preset_and_reports_what_is_lacking(tmp_path):
    root = tmp_path / "RSSCN7"
    write_preset_folders(root, "rsscn7")
    shutil.rmtree(root / "gParking")
    (root / "aGrass" / "Thumbs.db").write_bytes(b"\0")
    (root / "aGrass" / "desktop.ini").write_text("x")
    report = doctor("imagefolder", root)
    assert report.ok and report.preset == "rsscn7"
    assert report.images_present == 6 and sum(report.rejects.values()) == 2
    text = report.render()
    assert "preset:        rsscn7" in text
    assert "missing: gParking" in text                          # the note names the missing class folder
    assert "1 class(es) have no entry: gParking" in text
    assert "2 × not an image file (extension '.db'): aGrass/Thumbs.db" in text   # alike reasons count together


def test_doctor_groups_alike_rejects(tmp_path):
    root = tmp_path / "folders"
    for k in range(3):
        write_image(root / "a" / f"{k}.png", seed=k)
        (root / "a" / f"note{k}.txt").write_text("x")
    report = doctor("imagefolder", root)
    assert report.ok and sum(report.rejects.values()) == 3 and len(report.rejects) == 1
    assert "3 × not an image file (extension '.txt'): a/note0.txt" in report.render()


def test_cli_doctor_exit_codes(cli, shared_data, tmp_path):
    ok = cli("doctor", "fashion_products", shared_data / "fashion_product_images_small")
    assert "READY: 685 entries would be ingested with their image." in ok.stdout
    bad = cli("doctor", "fashiongen", tmp_path, check=False)
    assert bad.returncode == 2 and "no fashiongen_*_<split>.h5 files" in bad.stdout


def test_doctor_counts_a_too_long_file_name_as_a_reject(tmp_path):
    from conftest import write_karpathy
    root = tmp_path / "corpus"
    write_image(root / "images" / "a.jpg", seed=1)
    long_name = "y" * 300 + ".jpg"
    write_karpathy(root, [{"filename": "a.jpg"}, {"filename": long_name}])
    report = doctor("karpathy", root)
    assert report.ok and report.images_present == 1 and sum(report.rejects.values()) == 1
    text = report.render()
    assert "File name too long" in text and long_name not in text   # the name is shortened


def test_doctor_names_directory_links_it_does_not_follow(tmp_path):
    root = tmp_path / "folders"
    write_image(root / "a" / "1.png", seed=1)
    write_image(root / "b" / "2.png", seed=2)
    (root / "a" / "loop").symlink_to("..")
    report = doctor("imagefolder", root)
    assert report.ok and report.images_present == 2 and report.labels == {"a": 1, "b": 1}
    text = report.render()
    assert "directory link a/loop -> .. is not followed" in text
    assert "1 directory link(s) not followed (a reject row each): a/loop" in text


def test_doctor_reports_an_unreadable_annotation_file(tmp_path):
    (tmp_path / "corpus" / "dataset.json").mkdir(parents=True)   # unreadable as a file, even for root
    report = doctor("karpathy", tmp_path / "corpus")
    text = report.render()
    assert not report.ok and "cannot read dataset.json: Is a directory" in text
