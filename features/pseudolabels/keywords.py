"""`clipstore pseudolabel keywords`: keyword candidate sets for S-CLIP's keyword-level loss, as
`pseudo_keywords` rows: each unlabeled image of an `nn` / `ot` artifact gets the keywords of its
matched labeled image's captions, read from the caption × keyword matrix (`caption_keywords`)
that mining stored for a vocabulary.

  - union (default): the keywords of every caption of the match;
  - `--one-caption SEED`: the keywords of one caption of the match, drawn with
    numpy.random.default_rng(SEED) over the rows in image_id order: the public code draws one
    random caption per labeled sample (`random.choice(texts)` in its dataset), so this is the
    deterministic counterpart of what one epoch sees.
Sets are in vocabulary rank order; an empty set is a row too (the loss counts them). The upstream
row's confidence is carried along. Recipe-pinned on the upstream artifact and the vocabulary:
either changing gives a new version."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from clipstore.features.pseudolabels.common import produce_pseudolabels, pseudolabel_artifact, read_table
from clipstore.features.pseudolabels.tables import PSEUDO_KEYWORDS
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.parquet import read_parquet
from clipstore.warehouse.store import Artifact, Store

CLI_ORDER = 30
UPSTREAM_COLUMNS = ["image_id", "sample_id", "corpus", "match_id", "match_sample_id", "match_corpus",
                    "match_caption_ids", "confidence", "split_id", "embeddings_ids", "model_fingerprint",
                    "tower_fingerprint", "producer"]


def keyword_labels(store: Store, *, source: str, vocab: str, one_caption: int | None = None, name: str | None = None,
                   wait: bool = False) -> Artifact:
    """Candidate keyword sets of the unlabeled images of pseudo-label artifact `source` (nn,
    soft_nn or ot) from vocabulary `vocab`'s caption × keyword matrix (see the module doc)."""
    src = pseudolabel_artifact(store, source, table="pseudo_captions")
    vocab_art = _vocabulary(store, vocab)
    upstream = read_table(store, src, "pseudo_captions").select(UPSTREAM_COLUMNS)
    coverage = _vocab_samples(store, vocab_art)
    _check_coverage(upstream, coverage, vocab_art, src)
    params = {"source": src.artifact_id, "vocab": vocab_art.artifact_id,
              "mode": "one-caption" if one_caption is not None else "union", "seed": one_caption}

    def build(run) -> None:
        started = time.monotonic()
        by_caption, rank, text = _caption_keywords(store, vocab_art)
        table = _sets(upstream.sort_by("image_id"), by_caption, rank, text, one_caption)
        for i0 in range(0, max(table.num_rows, 1), 100_000):
            run.write({"pseudo_keywords": table.slice(i0, 100_000)})
        sizes = table.column("n_keywords").to_numpy()
        run.stats.update({"source": src.artifact_id, "source_producer": src.stats.get("producer"),
                          "vocab": vocab_art.name, "mode": params["mode"], "seed": one_caption,
                          "rows": table.num_rows, "empty_sets": int((sizes == 0).sum()),
                          "mean_set_size": round(float(sizes.mean()), 4) if len(sizes) else None,
                          "seconds": round(time.monotonic() - started, 3)})

    first = upstream.slice(0, 1).to_pylist()
    lineage = {"vocab_id": vocab_art.artifact_id, "source_id": src.artifact_id,
               **({k: first[0][k] for k in ("split_id", "model_fingerprint", "tower_fingerprint")} if first else {})}
    suffix = "" if one_caption is None else f".one{one_caption}"
    return produce_pseudolabels(store, producer="keywords", name=name or f"{src.name}.{vocab_art.name}{suffix}",
                                params=params, tables={"pseudo_keywords": PSEUDO_KEYWORDS}, lineage=lineage,
                                build=build, inputs=[src, vocab_art], wait=wait)


def _vocabulary(store: Store, ref: str) -> Artifact:
    art = store.get(ref, kind="vocab")
    if "caption_keywords" not in art.tables:
        raise InputError(f"{art.artifact_id} has no caption × keyword matrix (a concept vocabulary?)",
                         fix="pass a keyword or class-name vocabulary (`clipstore ls --kind vocab`)")
    if art.status != "complete":
        raise InputError(f"vocabulary {art.artifact_id} is not complete", fix="re-run the `clipstore mine` command")
    return art


def _vocab_samples(store: Store, vocab: Artifact) -> dict[str, set[str]]:
    """corpus -> the samples the vocabulary was matched against (its image_keywords rows)."""
    paths = store.table_paths(vocab, "image_keywords")
    rows = read_parquet(paths, columns=["corpus", "sample_id"]) if paths else None
    out: dict[str, set[str]] = {}
    if rows is not None:
        for corpus, sample in zip(rows.column("corpus").to_pylist(), rows.column("sample_id").to_pylist()):
            out.setdefault(corpus, set()).add(sample)
    return out


def _check_coverage(upstream: pa.Table, coverage: dict[str, set[str]], vocab: Artifact, src: Artifact) -> None:
    """Every matched labeled sample must be one the vocabulary was matched against: a vocabulary
    of another corpus (or one never matched) would give empty sets that look like real ones."""
    if not coverage:
        raise InputError(f"vocabulary {vocab.name} was never matched against captions (no caption × keyword matrix)",
                         where=vocab.artifact_id, fix="mine or import it with a match scope: --match-split SPLIT or "
                                                      "--match-corpus C")
    matched = list(zip(upstream.column("match_corpus").to_pylist(), upstream.column("match_sample_id").to_pylist()))
    missing = {(c, s) for c, s in matched if s not in coverage.get(c, ())}
    if missing:
        corpora = sorted({c for c, _ in missing})
        raise InputError(f"vocabulary {vocab.name} was matched against {', '.join(sorted(coverage))}, but "
                         f"{len(missing)} matched labeled samples of {src.name} come from {', '.join(corpora)} "
                         "captions it never saw", where=vocab.artifact_id,
                         fix=f"use a vocabulary matched against {', '.join(corpora)} (mine it with --match-corpus "
                             f"{corpora[0]} or --match-split SPLIT)")


def _caption_keywords(store: Store, vocab: Artifact) -> tuple[dict[str, list[str]], dict[str, int], dict[str, str]]:
    """(caption_id -> keyword ids, keyword_id -> rank, keyword_id -> text) of a vocabulary."""
    matrix = read_parquet(store.table_paths(vocab, "caption_keywords"), columns=["caption_id", "keyword_id"])
    keywords = read_parquet(store.table_paths(vocab, "keywords"), columns=["keyword_id", "keyword", "rank"])
    by_caption: dict[str, list[str]] = {}
    for caption, keyword in zip(matrix.column("caption_id").to_pylist(), matrix.column("keyword_id").to_pylist()):
        by_caption.setdefault(caption, []).append(keyword)
    rank = dict(zip(keywords.column("keyword_id").to_pylist(), keywords.column("rank").to_pylist()))
    text = dict(zip(keywords.column("keyword_id").to_pylist(), keywords.column("keyword").to_pylist()))
    return by_caption, rank, text


def _sets(upstream: pa.Table, by_caption: dict, rank: dict, text: dict, one_caption: int | None) -> pa.Table:
    captions = upstream.column("match_caption_ids").to_pylist()
    rng = np.random.default_rng(one_caption) if one_caption is not None else None
    used, sets = [], []
    for caps in captions:
        caps = list(caps or [])
        if rng is not None and caps:
            caps = [caps[int(rng.integers(len(caps)))]]
        used.append(caps)
        found = {k for c in caps for k in by_caption.get(c, ())}
        sets.append(sorted(found, key=lambda k: (rank.get(k, 1 << 30), k)))
    return pa.table({
        "image_id": upstream.column("image_id"), "sample_id": upstream.column("sample_id"),
        "corpus": upstream.column("corpus"), "match_id": upstream.column("match_id"),
        "match_sample_id": upstream.column("match_sample_id"),
        "caption_ids": pa.array(used, pa.list_(pa.string())),
        "keyword_ids": pa.array(sets, pa.list_(pa.string())),
        "keywords": pa.array([[text.get(k) for k in s] for s in sets], pa.list_(pa.string())),
        "n_keywords": pa.array([len(s) for s in sets], pa.int32()),
        "confidence": upstream.column("confidence"),
        "embeddings_ids": upstream.column("embeddings_ids"),
    })


def add_parser(sub, cli) -> None:
    s = sub.add_parser("keywords", help="keyword candidate sets from each unlabeled image's matched labeled item",
                       description="Keyword-level pseudo-labels (pseudo_keywords): the keywords of the matched "
                                   "labeled image's captions (union, or one seeded caption), from a vocabulary's "
                                   "caption × keyword matrix. Empty sets are rows too.")
    s.add_argument("--from", dest="source", required=True, metavar="ARTIFACT",
                   help="an nn / soft_nn / ot pseudo-label artifact (id or name); required")
    s.add_argument("--vocab", required=True, help="keyword or class-name vocabulary (id or name), matched against the "
                                                  "labeled captions; required")
    s.add_argument("--one-caption", type=int, metavar="SEED",
                   help="one seeded random caption of the match, as the public code draws (default: union over "
                        "its captions)")
    s.add_argument("--name", help="artifact name (default: SOURCE.VOCAB)")

    def cmd(args) -> None:
        t0 = time.monotonic()
        art = keyword_labels(cli.store(args), source=args.source, vocab=args.vocab, one_caption=args.one_caption,
                             name=args.name, wait=args.wait)
        cli.done(f"pseudolabel keywords {art.name}", art, t0)

    s.set_defaults(func=cmd)
