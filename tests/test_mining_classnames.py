"""Class-name vocabularies: the normalisation table on the real UCM folder names and RSICD-CLS
class lists, merging corpora without duplicates, matching, and bad input."""

from __future__ import annotations

import shutil

import pytest

from clipstore.ingest.pipeline import ingest
from clipstore.mining.classnames import has_ordinal_prefixes, mine_classnames, normalise_class_name, segment
from clipstore.mining.sclip_files import export_sclip
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.hashing import text_id
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store
from conftest import write_karpathy

UCM = {
    "agricultural": "agricultural", "airplane": "airplane", "baseballdiamond": "baseball diamond",
    "beach": "beach", "buildings": "buildings", "chaparral": "chaparral", "denseresidential": "dense residential",
    "forest": "forest", "freeway": "freeway", "golfcourse": "golf course", "harbor": "harbor",
    "intersection": "intersection", "mediumresidential": "medium residential", "mobilehomepark": "mobile home park",
    "overpass": "overpass", "parkinglot": "parking lot", "river": "river", "runway": "runway",
    "sparseresidential": "sparse residential", "storagetanks": "storage tanks", "tenniscourt": "tennis court",
}
RSICD_CLS = {
    "Airport": "airport", "BareLand": "bare land", "BaseballField": "baseball field", "Beach": "beach",
    "Bridge": "bridge", "Center": "center", "Church": "church", "Commercial": "commercial",
    "DenseResidential": "dense residential", "Desert": "desert", "Farmland": "farmland", "Forest": "forest",
    "Industrial": "industrial", "Meadow": "meadow", "MediumResidential": "medium residential",
    "Mountain": "mountain", "Park": "park", "Parking": "parking", "Playground": "playground", "Pond": "pond",
    "Port": "port", "RailwayStation": "railway station", "Resort": "resort", "River": "river", "School": "school",
    "SparseResidential": "sparse residential", "Square": "square", "Stadium": "stadium",
    "StorageTanks": "storage tanks", "Viaduct": "viaduct", "playfields": "play fields",
}


@pytest.fixture(scope="module")
def cls_store(tmp_path_factory, shared_data):
    """UC Merced's real class folders (ucm_cls) and RSICD's real class lists (rsicd_cls)."""
    store = Store(tmp_path_factory.mktemp("cls") / "store")
    ingest(store, "imagefolder", shared_data / "ucmerced_landuse" / "Images", name="ucm_cls", workers=1,
           progress=False)
    ingest(store, "rsicd_cls", shared_data / "rsicd", name="rsicd_cls", workers=1, progress=False)
    return store


def table_of(store, vocab_id):
    return query(store, "SELECT corpus, class, raw_name, name, rule, keyword_id FROM classnames WHERE vocab_id = $v",
                 {"v": vocab_id}).to_pylist()


def test_real_ucm_and_rsicd_class_names(cls_store):
    vocab = mine_classnames(cls_store, ["ucm_cls", "rsicd_cls"])
    rows = table_of(cls_store, vocab.artifact_id)
    assert {r["class"]: r["name"] for r in rows if r["corpus"] == "ucm_cls"} == UCM
    assert {r["class"]: r["name"] for r in rows if r["corpus"] == "rsicd_cls"} == RSICD_CLS
    rule = {(r["corpus"], r["class"]): r["rule"] for r in rows}
    assert rule[("ucm_cls", "denseresidential")] == "segmented"
    assert rule[("ucm_cls", "chaparral")] == "unchanged"
    assert rule[("rsicd_cls", "BareLand")] == "camel_case+lowercase"
    assert rule[("rsicd_cls", "Airport")] == "lowercase"
    assert all(r["keyword_id"] == text_id("keyword", r["name"]) for r in rows)

    # merged: 21 + 31 classes, 7 names shared, one keyword each, alphabetical
    keywords = query(cls_store, "SELECT keyword, rank, source FROM keywords WHERE vocab_id = $v ORDER BY rank",
                     {"v": vocab.artifact_id}).to_pylist()
    names = [k["keyword"] for k in keywords]
    assert len(rows) == 52 and len(names) == 45 == len(set(names)) and names == sorted(names)
    assert {k["source"] for k in keywords} == {"classname"}
    assert vocab.stats["merged"]["dense residential"] == ["ucm_cls/denseresidential", "rsicd_cls/DenseResidential"]
    assert len(vocab.stats["merged"]) == 7
    assert vocab.name == "classnames.ucm_cls+rsicd_cls"
    assert sorted(a for a, _ in cls_store.lineage(vocab.artifact_id)) == sorted(
        cls_store.current("corpus", c).artifact_id for c in ("ucm_cls", "rsicd_cls"))


def test_override_reproduces_the_hand_merged_list(cls_store, tmp_path):
    vocab = mine_classnames(cls_store, ["ucm_cls", "rsicd_cls"], overrides={"playfields": "playfields"})
    assert vocab.params["overrides"] == {"playfields": "playfields"}
    [path] = export_sclip(cls_store, vocab.artifact_id, tmp_path, sizes=None)
    assert path.name == "class-name.txt"
    assert path.read_text(encoding="utf-8").split("\n") == sorted(set(UCM.values()) | set(RSICD_CLS.values())
                                                                  - {"play fields"} | {"playfields"})
    rows = table_of(cls_store, vocab.artifact_id)
    assert [r["rule"] for r in rows if r["class"] == "playfields"] == ["override"]


def test_verbatim_names_are_recorded(cls_store):
    normalised = mine_classnames(cls_store, ["rsicd_cls"])
    verbatim = mine_classnames(cls_store, ["rsicd_cls"], normalise=False)
    assert verbatim.artifact_id != normalised.artifact_id and verbatim.params["normalise"] is False
    rows = {r["class"]: r for r in table_of(cls_store, verbatim.artifact_id)}
    assert rows["BareLand"]["name"] == "bareland" and rows["BareLand"]["rule"] == "verbatim"
    assert cls_store.current("vocab", "classnames.rsicd_cls").artifact_id == verbatim.artifact_id


def test_the_named_examples():
    assert normalise_class_name("denseresidential") == ("dense residential", "segmented")
    assert normalise_class_name("footballField") == ("football field", "camel_case+lowercase")
    assert normalise_class_name("baseball_diamond") == ("baseball diamond", "snake_case")
    assert normalise_class_name("thermal_power_station") == ("thermal power station", "snake_case")
    assert normalise_class_name("aGrass", ordinal_prefix=True) == ("grass", "ordinal_prefix+lowercase")
    assert normalise_class_name("dRiverLake", ordinal_prefix=True) == ("river lake",
                                                                         "ordinal_prefix+camel_case+lowercase")
    rsscn7 = "aGrass bField cIndustry dRiverLake eForest fResident gParking".split()
    assert has_ordinal_prefixes(rsscn7)
    assert not has_ordinal_prefixes(["iPhone", "jacket", "kTop"]) and not has_ordinal_prefixes(rsscn7[1:])
    assert segment("mobilehomepark") == ["mobile", "home", "park"]
    assert segment("chaparral") is None or normalise_class_name("chaparral") == ("chaparral", "unchanged")
    assert segment("xqzvkw") is None


def test_rsscn7_folders_and_matching_captions(tmp_path, shared_data):
    store = Store(tmp_path / "store")
    jpg = shared_data / "rsicd" / "RSICD_images" / "00001.jpg"
    for folder in "aGrass bField cIndustry dRiverLake eForest fResident gParking".split():
        (tmp_path / "rsscn7" / folder).mkdir(parents=True)
        shutil.copyfile(jpg, tmp_path / "rsscn7" / folder / "1.jpg")
    ingest(store, "imagefolder", tmp_path / "rsscn7", name="rsscn7", workers=1, progress=False)
    write_karpathy(tmp_path / "caps", [
        {"filename": "1.tif", "captions": ["a river , lake and forest .", "Grass around a parking ."]},
        {"filename": "2.tif", "captions": ["a river lake beside grass fields ."]}])
    ingest(store, "karpathy", tmp_path / "caps", name="karpathy", keep_missing=True, workers=1, progress=False)

    vocab = mine_classnames(store, ["rsscn7"], match_corpora=["karpathy"])
    rows = {r["class"]: r for r in table_of(store, vocab.artifact_id)}
    assert {c: r["name"] for c, r in rows.items()} == {
        "aGrass": "grass", "bField": "field", "cIndustry": "industry", "dRiverLake": "river lake",
        "eForest": "forest", "fResident": "resident", "gParking": "parking"}
    assert rows["aGrass"]["raw_name"] == "Grass"           # the ingest preset's display name, kept beside
    assert rows["aGrass"]["rule"] == "ordinal_prefix+lowercase"
    matched = query(store, "SELECT c.text, list_sort(list(k.keyword)) AS kws FROM caption_keywords ck "
                           "JOIN keywords k USING (vocab_id, keyword_id) JOIN captions c USING (caption_id) "
                           "WHERE ck.vocab_id = $v GROUP BY c.text ORDER BY c.text",
                    {"v": vocab.artifact_id}).to_pylist()
    assert matched == [{"text": "a river , lake and forest", "kws": ["forest"]},
                       {"text": "a river lake beside grass fields", "kws": ["grass", "river lake"]},
                       {"text": "grass around a parking", "kws": ["grass", "parking"]}]


def test_bad_input(cls_store, tmp_path):
    with pytest.raises(NotFoundError, match="no corpus 'aid'"):
        mine_classnames(cls_store, ["ucm_cls", "aid"])
    with pytest.raises(InputError, match="name the classification corpora"):
        mine_classnames(cls_store, [])
    with pytest.raises(InputError, match="override for 'Playfields': no such class"):
        mine_classnames(cls_store, ["rsicd_cls"], overrides={"Playfields": "playfields"})
    write_karpathy(tmp_path / "caps", [{"filename": "1.tif", "captions": ["a river ."]}])
    ingest(cls_store, "karpathy", tmp_path / "caps", name="captions_only", keep_missing=True, workers=1,
           progress=False)
    with pytest.raises(InputError, match="'captions_only' has no class list") as err:
        mine_classnames(cls_store, ["ucm_cls", "captions_only"])
    assert "imagefolder" in err.value.fix
