"""Nouns and noun phrases of real RS captions: the offline fallback (the mode this machine has,
recorded with its reason), strictness about the trained pipeline, and what the fallback yields
on whole real corpora."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import spacy

from clipstore.mining.nlp import DEFAULT_MODEL, NounExtractor
from clipstore.warehouse.errors import ClipstoreError, NotFoundError


@pytest.fixture(scope="module")
def extractor() -> NounExtractor:
    return NounExtractor()


def real_captions(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    return [s["raw"] for image in data["images"] for s in image["sentences"]]


@pytest.fixture(scope="module")
def ucm(shared_data) -> list[str]:
    return real_captions(shared_data / "ucm_captions" / "dataset.json")


@pytest.fixture(scope="module")
def rsicd(shared_data) -> list[str]:
    return real_captions(shared_data / "rsicd" / "dataset_rsicd.reconstructed.json")


# ---- the mode is recorded -------------------------------------------------------------------
def test_missing_trained_pipeline_falls_back_and_says_why(extractor):
    info = extractor.info
    assert info["requested"] == DEFAULT_MODEL
    assert info["mode"] == "fallback"
    assert info["spacy"] == spacy.__version__
    assert info["pipeline"].startswith("blank:en")
    assert info["pipes"] == ["lemmatizer"]
    assert DEFAULT_MODEL in info["reason"] and "not installed" in info["reason"]
    assert info["spacy_lookups_data"]


def test_no_model_requested_is_the_fallback_with_its_own_reason():
    info = NounExtractor(None).info
    assert info["mode"] == "fallback" and info["requested"] is None
    assert info["reason"] == "no trained pipeline was requested"


def test_requiring_the_trained_pipeline_names_the_official_install(tmp_path):
    with pytest.raises(NotFoundError) as err:
        NounExtractor(DEFAULT_MODEL, require_trained=True)
    assert isinstance(err.value, ClipstoreError)
    assert "python -m spacy download en_core_web_sm" in err.value.fix
    assert DEFAULT_MODEL in err.value.what
    # a pipeline folder that does not exist is refused the same way, naming what was asked for
    with pytest.raises(NotFoundError) as err:
        NounExtractor(str(tmp_path / "no_such_pipeline"), require_trained=True)
    assert "no_such_pipeline" in err.value.what


# ---- real captions --------------------------------------------------------------------------
def test_the_commonest_rsicd_caption(extractor, rsicd):
    caption = "many buildings and green trees are in a dense residential area ."
    assert rsicd.count(caption) == 592  # the real file's most repeated caption
    terms = extractor.extract(caption)
    assert terms.nouns == ("building", "tree", "area")
    assert terms.phrases == ("green tree", "dense residential area")


@pytest.mark.parametrize("caption, nouns, phrases", [
    ("many planes are parked in an airport .", ("plane", "airport"), ()),
    ("Lots of cars parked neatly in the parking lot .", ("lot", "car", "parking"), ("parking lot",)),
    ("It is a dense residential area with lots of houses arranged neatly .", ("area", "lot", "house"),
     ("dense residential area",)),
    ("it is a large piece of yellow bareland .", ("piece", "bareland"), ("large piece", "yellow bareland")),
    ("many gray black buildings are around a square green pond .", ("building", "pond"),
     ("gray black building", "square green pond")),
    ("the trees are green, the lake is green and the buildings are colorful .", ("tree", "lake", "building"), ()),
    ("a small basketball court situates in front of a high-rise building .", ("basketball", "court", "building"),
     ("small basketball court", "high-rise building")),
    ("This is a beach with green-blue sea and sands .", ("beach", "sea", "sand"), ("green-blue sea",)),
])
def test_real_captions(extractor, ucm, rsicd, caption, nouns, phrases):
    assert caption in ucm or caption in rsicd
    terms = extractor.extract(caption)
    assert terms.nouns == nouns
    assert terms.phrases == phrases


def test_case_does_not_change_the_result(extractor):
    assert extractor.extract("Many Planes Are Parked In An Airport .") == \
        extractor.extract("many planes are parked in an airport .")


def test_whole_ucm_corpus(extractor, ucm):
    texts = sorted(set(ucm))
    results = extractor.extract_many(texts)
    nouns = Counter(n for r in results for n in r.nouns)
    for concept in ("building", "tree", "road", "airplane", "car", "house", "tank", "court", "beach", "river"):
        assert nouns[concept] >= 50, concept
    # adjectives and quantifiers are never (or almost never) read as nouns
    for word in ("many", "some", "dense", "residential", "sparse", "green", "white", "small"):
        containing = [r for t, r in zip(texts, results) if f" {word} " in f" {t.lower()} "]
        as_noun = sum(1 for r in containing if word in r.nouns)
        assert as_noun <= 0.05 * len(containing), (word, as_noun, len(containing))
    phrases = Counter(p for r in results for p in r.phrases)
    for phrase in ("tennis court", "storage tank", "sparse residential area", "golf course", "parking lot"):
        assert phrases[phrase] >= 40, phrase


def test_whole_rsicd_corpus_plurals_become_lemmas(extractor, rsicd):
    results = extractor.extract_many(sorted(set(rsicd)))
    nouns = Counter(n for r in results for n in r.nouns)
    for plural, singular in (("planes", "plane"), ("trees", "tree"), ("buildings", "building"),
                             ("factories", "factory"), ("leaves", "leaf"), ("fields", "field")):
        assert nouns[plural] == 0 and nouns[singular] > 0, plural
    # WordNet lacks "bareland", one of RSICD's commonest words: unknown words are nouns too
    assert nouns["bareland"] > 400
    # verbs that WordNet also lists as nouns are read from their context
    assert nouns["lying"] + nouns["surround"] < 0.05 * nouns["tree"]
