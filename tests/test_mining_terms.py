"""The per-caption parse cache on real caption files: what it holds, incremental growth, a run
killed mid-way, and results that do not depend on the number of worker processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from clipstore.ingest.pipeline import ingest
from clipstore.mining.terms import CaptionMapper, TermsConfig, build_terms, mine_terms, parse_captions, parse_loop
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.sql import Session, query
from clipstore.warehouse.store import Store

REPO = Path(__file__).resolve().parents[1]


def write_subset(source: Path, target: Path, n_images: int) -> Path:
    """The first n images of a real Karpathy caption file, entries untouched."""
    data = json.loads(source.read_text())
    data["images"] = data["images"][:n_images]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data))
    return target


def ingest_captions(store: Store, fmt: str, path: Path, name: str):
    return ingest(store, fmt, path, name=name, keep_missing=True, workers=1, progress=False)


def last_run(store: Store, artifact_id: str) -> dict:
    row = query(store, "SELECT status, summary FROM runs WHERE artifact_id = ? ORDER BY started_at DESC LIMIT 1",
                [artifact_id]).to_pylist()[0]
    return {"status": row["status"], **json.loads(row["summary"] or "{}")}


def term_rows(store: Store, corpus: str) -> list[tuple]:
    rows = query(store, "SELECT caption_id, sample_id, kind, term, score FROM caption_terms WHERE corpus = ?",
                 [corpus]).to_pylist()
    return sorted(tuple(r.values()) for r in rows)


@pytest.fixture(scope="module")
def ucm_store(tmp_path_factory, shared_data):
    """The first 400 images of UCM_captions (2,000 real captions; caption-only samples are enough
    for text), with their terms mined once."""
    root = tmp_path_factory.mktemp("ucm")
    store = Store(root / "store")
    path = write_subset(shared_data / "ucm_captions" / "dataset.json", root / "ucm" / "dataset.json", 400)
    ingest_captions(store, "ucm_captions", path.parent, "ucm_captions")
    artifact = mine_terms(store, "ucm_captions", workers=1, progress=False)
    return store, artifact


# ---- contents -------------------------------------------------------------------------------
def test_cache_holds_nouns_phrases_and_yake_per_caption(ucm_store):
    store, artifact = ucm_store
    assert artifact.kind == "terms" and artifact.name == "ucm_captions" and artifact.status == "complete"
    assert artifact.counts["captions"] == 2000
    run = last_run(store, artifact.artifact_id)
    assert run["status"] == "done" and run["parsed_captions"] == 2000
    assert run["distinct_texts"] == 330  # UCM repeats its captions: each distinct text is parsed once

    caption = "a regular baseball diamond compose of manicured lawns and sand"
    rows = query(store, "SELECT t.caption_id, t.kind, t.term, t.score FROM caption_terms t JOIN captions c "
                        "USING (caption_id) WHERE c.text = ? ORDER BY t.caption_id, t.kind, t.score, t.term",
                 [caption]).to_pylist()
    first = [r for r in rows if r["caption_id"] == rows[0]["caption_id"]]
    by_kind = {k: [r for r in first if r["kind"] == k] for k in ("noun", "noun_phrase", "yake")}
    assert {r["term"] for r in by_kind["noun"]} == {"baseball", "diamond", "lawn", "sand"}
    assert [r["term"] for r in by_kind["noun_phrase"]] == ["regular baseball diamond"]
    yake = by_kind["yake"]
    assert len(yake) == 5 and all(r["score"] > 0 for r in yake)  # YAKE's top=5, n=2 were applied
    assert {"baseball diamond", "manicured lawns", "sand"} <= {r["term"] for r in yake}
    assert all(r["score"] is None for r in by_kind["noun"] + by_kind["noun_phrase"])
    assert len({r["caption_id"] for r in rows}) == 80  # the real file has this caption 80 times


def test_recipe_is_the_extractor_config_not_the_corpus_version(ucm_store):
    _, artifact = ucm_store
    params = artifact.params
    assert set(params) == {"corpus", "config", "extractor"}
    assert params["config"] == {"model": "en_core_web_sm", "yake_n": 2, "yake_top": 5, "yake_dedup": 0.9,
                                "yake_language": "en"}
    assert params["extractor"]["mode"] == "fallback"
    assert artifact.stats["extractor"]["reason"].startswith("trained pipeline 'en_core_web_sm' is not installed")


def test_unchanged_corpus_is_a_noop(ucm_store):
    store, artifact = ucm_store
    again = mine_terms(store, "ucm_captions", workers=2, progress=False)
    assert again.artifact_id == artifact.artifact_id
    run = last_run(store, artifact.artifact_id)
    assert run["status"] == "noop" and run["parsed_captions"] == 0 and run["skipped"] == 2000


def test_bad_input_is_a_clear_error(ucm_store):
    store, _ = ucm_store
    with pytest.raises(NotFoundError) as err:
        mine_terms(store, "ucm_captionz", progress=False)
    assert "ucm_captions" in str(err.value) and "clipstore ingest" in err.value.fix
    with pytest.raises(InputError):
        mine_terms(store, "ucm_captions", part_size=0, progress=False)


# ---- growth ---------------------------------------------------------------------------------
def test_a_grown_corpus_parses_only_its_new_captions(tmp_path, shared_data):
    store = Store(tmp_path / "store")
    source = shared_data / "ucm_captions" / "dataset.json"
    path = write_subset(source, tmp_path / "ucm_part" / "dataset.json", 60)
    ingest_captions(store, "ucm_captions", path.parent, "ucm_part")
    first = mine_terms(store, "ucm_part", workers=1, progress=False)
    assert last_run(store, first.artifact_id)["parsed_captions"] == 300

    write_subset(source, path, 100)  # the source gained 40 images (200 captions)
    ingest_captions(store, "ucm_captions", path.parent, "ucm_part")
    grown = mine_terms(store, "ucm_part", workers=1, progress=False)
    assert grown.artifact_id == first.artifact_id  # same recipe: the cache grows with the corpus
    assert last_run(store, grown.artifact_id)["parsed_captions"] == 200
    assert grown.counts["captions"] == 500
    parsed = query(store, "SELECT count(DISTINCT caption_id) AS n FROM parsed_captions").to_pylist()[0]["n"]
    captions = query(store, "SELECT count(*) AS n FROM captions").to_pylist()[0]["n"]
    assert parsed == captions == 500


# ---- workers --------------------------------------------------------------------------------
def test_helper_processes_give_the_rows_one_process_gives(tmp_path, shared_data):
    path = write_subset(shared_data / "rsicd" / "dataset_rsicd.reconstructed.json", tmp_path / "rsicd.json", 200)
    texts = [s["raw"] for image in json.loads(path.read_text())["images"] for s in image["sentences"]]
    assert len(set(texts)) > 2 * 128  # 1,000 captions, 285 distinct texts: each part has two batches

    alone = Store(tmp_path / "alone")
    ingest_captions(alone, "rsicd", path, "rsicd_part")
    one = mine_terms(alone, "rsicd_part", workers=1, progress=False, part_size=500)
    assert last_run(alone, one.artifact_id)["helper_batches"] == 0

    helped = Store(tmp_path / "helped")
    ingest_captions(helped, "rsicd", path, "rsicd_part")
    with CaptionMapper(TermsConfig(), workers=2) as mapper:
        mapper.start(wait=True)  # so that the helper surely takes part, however busy the machine
        assert mapper.ready_helpers == 1
        with helped.writing():
            two, summary = build_terms(helped, "rsicd_part", mapper, progress=False, part_size=500)
        assert summary["workers"] == 2 and summary["helper_batches"] >= 1
        mapped = mapper.map(texts)  # all parsed already: the memo answers
    assert two.artifact_id == one.artifact_id
    assert term_rows(helped, "rsicd_part") == term_rows(alone, "rsicd_part")
    assert query(helped, "SELECT * FROM parsed_captions ORDER BY caption_id").to_pylist() == \
        query(alone, "SELECT * FROM parsed_captions ORDER BY caption_id").to_pylist()
    assert mapped == parse_loop(texts)
    assert parse_captions(texts[:200], workers=1) == mapped[:200]


# ---- a killed run ---------------------------------------------------------------------------
def test_a_killed_run_shows_no_half_part_and_resumes(tmp_path, shared_data, ucm_store):
    store = Store(tmp_path / "store")
    path = write_subset(shared_data / "ucm_captions" / "dataset.json", tmp_path / "ucm" / "dataset.json", 200)
    ingest_captions(store, "ucm_captions", path.parent, "ucm_captions")  # the first 1,000 captions
    script = textwrap.dedent(f"""
        from clipstore.mining.terms import mine_terms
        from clipstore.warehouse.store import Store
        if __name__ == "__main__":
            mine_terms(Store({str(store.root)!r}), "ucm_captions", workers=1, progress=False, part_size=50)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while len(list(store.root.glob("artifacts/terms-*/caption_terms/*.parquet"))) < 3:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # nothing of the unfinished version is visible; its committed parts wait for the resume
    assert store.current("terms", "ucm_captions") is None
    assert "caption_terms" not in Session(store).tables()
    artifact = store.list("terms")[0]
    done = sum(n for _, n in store.part_rows(artifact.artifact_id, "parsed_captions", pending=True))
    assert 0 < done < 1000 and done % 50 == 0

    resumed = mine_terms(store, "ucm_captions", workers=1, progress=False, part_size=50)
    assert resumed.artifact_id == artifact.artifact_id
    assert last_run(store, resumed.artifact_id)["parsed_captions"] == 1000 - done
    on_disk = set(store.root.glob("artifacts/terms-*/*/*.parquet"))
    assert on_disk == {p for _, _, p in store.parts(resumed.artifact_id)}  # the half part was swept
    # the same rows as the uninterrupted run over the whole corpus (same sample and caption ids)
    rows = term_rows(store, "ucm_captions")
    ids = {r[0] for r in rows}
    reference_store, _ = ucm_store
    assert len(ids) == 1000
    assert rows == [r for r in term_rows(reference_store, "ucm_captions") if r[0] in ids]
