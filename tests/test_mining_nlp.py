"""Nouns and noun phrases of real RS captions: the offline fallback (the mode this machine has,
recorded with its reason), strictness about the trained pipeline, and what the fallback yields
on whole real corpora."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import spacy

from clipstore.mining.nlp import DEFAULT_MODEL, NounExtractor, Nouns
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


# ---- the trained mode -------------------------------------------------------------------------
# Real RSICD and UCM captions with their Penn Treebank tags, to train a small tagger on.
TAGGED = [
    ("some white cars are parked in the parking lot .", "DT JJ NNS VBP VBN IN DT NN NN ."),
    ("a tennis court is next to some green trees .", "DT NN NN VBZ JJ IN DT JJ NNS ."),
    ("there is a long bridge over the river .", "EX VBZ DT JJ NN IN DT NN ."),
    ("a plane is parked on an airport next to a road .", "DT NN VBZ VBN IN DT NN JJ IN DT NN ."),
    ("two storage tanks are on the ground .", "CD NN NNS VBP IN DT NN ."),
    ("eight storage tanks are surrounded by green meadows .", "CD NN NNS VBP VBN IN JJ NNS ."),
    ("many storage tanks are surrounded by many bareland .", "JJ NN NNS VBP VBN IN JJ NN ."),
    ("many buildings and green trees are in a dense residential area .", "JJ NNS CC JJ NNS VBP IN DT JJ JJ NN ."),
    ("many planes are parked in an airport .", "JJ NNS VBP VBN IN DT NN ."),
    ("it is a large piece of yellow bareland .", "PRP VBZ DT JJ NN IN JJ NN ."),
    ("the trees are green , the lake is green and the buildings are colorful .",
     "DT NNS VBP JJ , DT NN VBZ JJ CC DT NNS VBP JJ ."),
]


@pytest.fixture(scope="module")
def tagger_pipeline(tmp_path_factory) -> Path:
    """A trained English pipeline of our own (a tagger and spaCy's lookup lemmatizer), saved as
    a folder: what `--spacy-model PATH` loads, with no parser."""
    import random

    from spacy.training import Example

    nlp = spacy.blank("en")
    tagger = nlp.add_pipe("tagger")
    examples = [Example.from_dict(nlp.make_doc(text), {"tags": tags.split()}) for text, tags in TAGGED]
    for tag in sorted({t for _, tags in TAGGED for t in tags.split()}):
        tagger.add_label(tag)
    optimizer = nlp.initialize(lambda: examples)
    rng = random.Random(0)
    for _ in range(40):
        rng.shuffle(examples)
        nlp.update(examples, sgd=optimizer)
    nlp.add_pipe("lemmatizer", config={"mode": "lookup"}).initialize()
    path = tmp_path_factory.mktemp("spacy") / "en_rs_tagger"
    nlp.meta["name"] = "rs_tagger"
    nlp.to_disk(path)
    return path


def test_a_trained_pipeline_folder_is_used_with_its_tags_and_lemmas(tagger_pipeline):
    extractor = NounExtractor(str(tagger_pipeline), require_trained=True)
    assert extractor.info["mode"] == "trained" and extractor.info["pipeline"] == "en_rs_tagger"
    assert extractor.info["pipes"] == ["tagger", "lemmatizer"]
    got = extractor.extract_many([text for text, _ in TAGGED])
    for (text, tags), terms in zip(TAGGED, got):
        words = [(w, t) for w, t in zip(text.split(), tags.split())]
        assert len(terms.nouns) == len({w for w, t in words if t.startswith("NN")}), (text, terms)
    assert got[0].phrases == ("white car", "parking lot")       # tag runs, as there is no parser
    assert got[5] == Nouns(("storage", "tank", "meadow"), ("storage tank", "green meadow"))  # "eight": no word
    assert got[7] == Nouns(("building", "tree", "area"), ("green tree", "dense residential area"))
    assert got[10] == Nouns(("tree", "lake", "building"), ())   # predicate adjectives are no modifiers
    assert got[8].phrases == ()                                  # "many" is a stop word


def test_noun_chunks_of_a_parsed_doc():
    """With a dependency parse, phrases are spaCy's noun chunks (here a parse given by hand)."""
    from spacy.tokens import Doc

    from clipstore.mining.nlp import _trained_nouns

    nlp = spacy.blank("en")
    words = "many green trees are around a dense residential area".split()
    doc = Doc(nlp.vocab, words=words,
              tags="JJ JJ NNS VBP IN DT JJ JJ NN".split(), pos="ADJ ADJ NOUN AUX ADP DET ADJ ADJ NOUN".split(),
              lemmas="many green tree be around a dense residential area".split(),
              heads=[2, 2, 3, 3, 3, 8, 8, 8, 4], deps="amod amod nsubj ROOT prep det amod amod pobj".split())
    assert _trained_nouns(doc) == Nouns(("tree", "area"), ("green tree", "dense residential area"))
    no_lemmas = Doc(nlp.vocab, words=words, tags="JJ JJ NNS VBP IN DT JJ JJ NN".split())
    assert _trained_nouns(no_lemmas) == Nouns(("trees", "area"), ("green trees", "dense residential area"))


def test_concepts_mined_with_a_trained_pipeline_record_it(tagger_pipeline, shared_data, tmp_path):
    """`mine concepts --spacy-model PATH` end to end (two processes): the recipe names the
    trained pipeline, so its vocabulary and parse cache are other artifacts than the fallback's."""
    from clipstore.ingest.pipeline import ingest
    from clipstore.mining.concepts import mine_concepts
    from clipstore.warehouse.sql import query
    from clipstore.warehouse.store import Store

    store = Store(tmp_path / "store")
    ingest(store, "sydney_captions", shared_data / "sydney_captions", images=shared_data / "sydney_captions" / "imgs",
           keep_missing=True, workers=1, progress=False)
    trained = mine_concepts(store, corpora=["sydney_captions"], model=str(tagger_pipeline), require_trained=True,
                            workers=2, progress=False)
    fallback = mine_concepts(store, corpora=["sydney_captions"], model=None, name="concepts.fallback",
                             workers=1, progress=False)
    assert trained.params["extractor"] == "trained" and fallback.params["extractor"] == "fallback"
    assert set(trained.params["terms"].values()).isdisjoint(fallback.params["terms"].values())
    words = {r["concept"] for r in query(store, "SELECT concept FROM concepts WHERE vocab_id = ?",
                                         [trained.artifact_id]).to_pylist()}
    assert {"airport", "building", "river", "runway"} <= words, " ".join(sorted(words))
