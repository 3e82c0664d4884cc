"""`clipstore pseudolabel propagate`: ReCLIP label propagation over a classification corpus's
images (`pseudo_classes`, producer `propagate`).

Inputs: the corpus's image embeddings and its class text embeddings (the renormalised mean over
a template set, `embed --modality classname --templates T`), both of one model: from `--model`
(what the caches lack is embedded first: only the missing items) or named (`--embeddings` for
the images, `--class-embeddings` or the cache of the same model for the classes). The corpus's
own classes are never read by the computation; they are the audit's truth. The numerics are in
reclip.py (projection, O(N·k) graph, CG diffusion); each row also records the zero-shot class of
the same vectors (`zero_shot`), so the audit compares propagation with zero-shot.

Recipe-pinned: the recipe holds the digests of exactly the image and class vectors used and the
parameters, so the same inputs are a no-op, and a grown corpus gives a new version (every
label depends on every image)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from clipstore.features.items import CLASSNAME, IMAGE
from clipstore.features.pseudolabels.classes import CLASS_TABLES, class_rows
from clipstore.features.pseudolabels.common import (Side, check_finite, check_pool, default_name,
                                                     produce_pseudolabels, vectors_digest)
from clipstore.features.pseudolabels.reclip import ALPHA, CG_ITERS, CG_RTOL, K, propagate
from clipstore.features.prompts import class_item_id, template_set
from clipstore.features.vectors import open_embeddings
from clipstore.features.vectorset import vector_set
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.hashing import digest
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store

PRODUCER = "propagate"
CLI_ORDER = 60


def label_propagation(store: Store, *, corpus: str, model=None, embeddings: list[str] | None = None,
                      class_embeddings: str | None = None, templates: str = "default", k: int = K,
                      alpha: float = ALPHA, iterations: int = CG_ITERS, name: str | None = None,
                      batch_size: int = 64, workers: int | None = None, wait: bool = False,
                      progress: bool = True) -> Artifact:
    """ReCLIP pseudo-labels for every image of `corpus` (see the module doc). The solve runs on the
    model's device with `model`, else on the GPU when one is visible."""
    if (model is None) == (not embeddings):
        raise InputError("label propagation needs the vectors of one model: pass --model SPEC or --embeddings ID",
                         fix="e.g. --model tiny-vit (embeds what is missing), or --embeddings ID --class-embeddings ID")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError(f"--k must be a positive integer, got {k!r}", fix="e.g. --k 20")
    if not 0 < alpha < 1:
        raise InputError(f"--alpha must be between 0 and 1 (exclusive), got {alpha}", fix="ReCLIP uses 0.99")
    if not isinstance(iterations, int) or iterations < 1:
        raise InputError(f"--iterations must be a positive integer, got {iterations!r}", fix="ReCLIP uses 20")
    tset = template_set(templates)
    corpus_art = store.corpora([corpus])[corpus]
    corpus_classes = _corpus_classes(store, corpus)
    from clipstore.features.knn import default_device
    model_fp, model_name, device = None, None, default_device()
    if model is not None:   # the solve runs where the model does (a ModelSpec's --device)
        image_arts, class_art, model_fp, model_name, device = _embed(store, model, corpus, templates, batch_size,
                                                                     workers, wait, progress)
    else:
        image_arts = [store.get(e, kind="embeddings") for e in dict.fromkeys(embeddings)]
        class_art = _class_embeddings(store, class_embeddings, corpus, tset, image_arts)
    tower, model_fp, model_name = _one_model(image_arts, class_art, model_fp, model_name)
    images = _corpus_images(store, corpus, image_arts)
    classes, class_digest = _class_vectors(store, class_art, corpus_classes, tset, corpus)
    check_pool(k, len(images) + len(corpus_classes) - 1,
               f"the graph over corpus {corpus!r}'s {len(images)} images and {len(corpus_classes)} class anchors",
               option="--k")
    names = [raw for raw, _ in corpus_classes]
    params = {"corpus": corpus, "tower_fingerprint": tower, "images": images.digest, "classes": class_digest,
              "class_names": names, "templates": tset.recipe(), "k": k, "alpha": alpha, "iterations": iterations,
              "rtol": CG_RTOL}
    lineage = {"embeddings_ids": [a.artifact_id for a in image_arts] + [class_art.artifact_id],
               "model_fingerprint": model_fp, "tower_fingerprint": tower}

    def build(run) -> None:
        result = propagate(images.vectors, classes, k=k, alpha=alpha, iters=iterations, rtol=CG_RTOL, device=device)
        zero_shot = (images.vectors @ classes.T).argmax(axis=1)   # first maximum: ties to the first class
        rows = np.arange(len(images))
        run.write({"pseudo_classes": class_rows(images, rows, names, result.labels, result.confidence,
                                                result.distribution, zero_shot=zero_shot)})
        run.stats.update({"k": result.k, "edges": result.edges, "cg_iterations": result.iterations,
                          "cg_converged_classes": result.converged, "solver": result.solver, "classes": len(names),
                          "unreached": int((result.labels < 0).sum()), "corpus": corpus})

    return produce_pseudolabels(store, producer=PRODUCER, name=name or default_name(corpus, PRODUCER, model_name),
                                params=params, tables=CLASS_TABLES, lineage=lineage, build=build,
                                sources=image_arts + [class_art, corpus_art], config={"device": device}, wait=wait)


# ---- inputs -----------------------------------------------------------------------------------------
def _corpus_classes(store: Store, corpus: str) -> list[tuple[str, str]]:
    """(raw class, display name) in class_index order; a corpus without classes is refused."""
    with Session(store) as session:
        rows = session.query('SELECT "class", name FROM classes WHERE corpus = $corpus ORDER BY class_index',
                             {"corpus": corpus}).to_pylist() if "classes" in session.tables() else []
    if not rows:
        raise InputError(f"corpus {corpus!r} has no classes: label propagation needs the class names",
                         fix="pass a classification corpus (e.g. one ingested with `clipstore ingest imagefolder`)")
    return [(r["class"], r["name"] or r["class"]) for r in rows]


def _embed(store: Store, model, corpus: str, templates: str, batch_size: int, workers, wait: bool, progress: bool):
    from clipstore.features.checkpoint_artifacts import resolve_model_spec
    from clipstore.features.embed import embed
    from clipstore.features.models import LoadedModel, load_model
    loaded = model if isinstance(model, LoadedModel) else load_model(resolve_model_spec(store, model))
    arts = embed(store, model=loaded, corpus=corpus, modality=(IMAGE, CLASSNAME), templates=templates,
                 batch_size=batch_size, workers=workers, wait=wait, progress=progress)
    image_arts = [a for a in arts if a.params.get("modality") == IMAGE]
    class_art = next(a for a in arts if a.params.get("modality") == CLASSNAME)
    return image_arts, class_art, loaded.fingerprint, loaded.name, str(loaded.device)


def _class_embeddings(store: Store, ref: str | None, corpus: str, tset, image_arts: list[Artifact]) -> Artifact:
    """The named class embeddings, or the cache of the images' model for this corpus and template set."""
    if ref is not None:
        art = store.get(ref, kind="embeddings")
        if art.params.get("modality") != CLASSNAME:
            raise InputError(f"{art.name} holds {art.params.get('modality')} embeddings, not class names",
                             fix=f"pass the class embeddings of {corpus}: clipstore embed --modality classname "
                                 f"--corpus {corpus} --model M (`clipstore ls --kind embeddings`: *.classname.*)")
        return art
    model_fps = {a.stats.get("model_fingerprint") for a in image_arts}
    found = [a for a in store.current_all("embeddings") if a.params.get("modality") == CLASSNAME
             and a.params.get("corpus") == corpus and (a.params.get("templates") or {}).get("digest") == tset.digest
             and a.stats.get("model_fingerprint") in model_fps]
    if not found:
        raise NotFoundError(f"no class embeddings of corpus {corpus!r} with template set {tset.name!r} from the "
                            "model of these image embeddings", where=str(store.root),
                            fix=f"pass --model SPEC (embeds them), or embed them: clipstore embed --modality classname "
                                f"--corpus {corpus} --templates {tset.name} --model M, or name them with "
                                "--class-embeddings ID")
    return found[-1]


def _one_model(image_arts: list[Artifact], class_art: Artifact, model_fp, model_name):
    """(image tower fingerprint, model fingerprint, model name); refuses vectors of several models."""
    bad = [a.name for a in image_arts if a.params.get("modality") != IMAGE or a.params.get("views") is not None]
    if bad:
        raise InputError(f"label propagation reads plain image embeddings; not such: {', '.join(bad)}",
                         fix="pass image embeddings artifacts (`clipstore ls --kind embeddings`: *.image.*)")
    towers = {a.params.get("fingerprint") for a in image_arts}
    models = {a.stats.get("model_fingerprint") for a in image_arts} | {class_art.stats.get("model_fingerprint")}
    if len(towers) > 1 or len(models) > 1:
        listed = "; ".join(f"{a.name} (model {a.stats.get('model')}, {str(a.stats.get('model_fingerprint'))[:12]})"
                           for a in [*image_arts, class_art])
        raise InputError(f"the image and class embeddings come from different models: {listed}",
                         fix="pass embeddings of one model only, or --model SPEC to use (and fill) that model's caches")
    return towers.pop(), model_fp or models.pop(), model_name or image_arts[0].stats.get("model") or "model"


def _corpus_images(store: Store, corpus: str, arts: list[Artifact]) -> Side:
    """Every image of the corpus with its vector (refuses missing and non-finite vectors)."""
    vset = vector_set(store, arts, modality=IMAGE)
    keep = np.flatnonzero(np.asarray(vset.items.column("corpus").to_pylist(), dtype=object) == corpus)
    with Session(store) as session:
        wanted = set(session.query("SELECT DISTINCT image_id FROM images WHERE corpus = $corpus",
                                   {"corpus": corpus}).column("image_id").to_pylist())
    ids = vset.items.column("item_id").to_pylist()
    keep = np.asarray([r for r in keep if ids[r] in wanted], dtype=np.int64)
    missing = wanted - {ids[r] for r in keep}
    if missing or not len(keep):
        raise InputError(f"{len(missing)} of the {len(wanted)} images of corpus {corpus!r} have no vector in the "
                         f"embeddings given ({', '.join(a.name for a in arts)})",
                         fix=f"pass --model SPEC to embed what is missing, or: clipstore embed --corpus {corpus} "
                             "--model M")
    items = vset.items.take(pa.array(keep, pa.int64()))
    vectors = np.asarray(vset.take(keep), dtype=np.float32)
    check_finite(vectors, items, f"images of corpus {corpus!r}")
    return Side(items, vectors, vectors_digest(store, items))


def _class_vectors(store: Store, art: Artifact, classes: list[tuple[str, str]], tset, corpus: str):
    """(C × d float32 class vectors in class order, digest of exactly those stored vectors)."""
    emb = open_embeddings(store, art)
    items, vectors = emb.select(modality=CLASSNAME)
    row = {item: i for i, item in enumerate(items.column("item_id").to_pylist())}
    wanted = [class_item_id(display, tset) for _, display in classes]
    missing = [display for (_, display), item in zip(classes, wanted) if item not in row]
    if missing:
        raise InputError(f"{len(missing)} of the {len(classes)} classes of corpus {corpus!r} have no vector in "
                         f"{art.name} with template set {tset.name!r} (e.g. {missing[0]!r})",
                         fix=f"embed them: clipstore embed --modality classname --corpus {corpus} --templates "
                             f"{tset.name} --model M, or pass --model SPEC")
    rows = [row[i] for i in wanted]
    out = np.asarray(vectors[rows], dtype=np.float32)
    picked = items.take(pa.array(rows, pa.int64()))
    check_finite(out, picked.append_column("embeddings_id", pa.array([art.artifact_id] * len(rows), pa.string())),
                 f"class vectors of corpus {corpus!r}")
    return out, digest([art.artifact_id, picked.column("part").to_pylist(), picked.column("row").to_pylist(),
                        digest(out.tobytes().hex())])


# ---- CLI --------------------------------------------------------------------------------------------
def add_parser(sub, cli) -> None:
    p = sub.add_parser("propagate", help="ReCLIP label propagation over a classification corpus's images",
                       description="ReCLIP: class text embeddings define a projection (SVD, first singular "
                                   "direction dropped); a kNN graph over class anchors and images (O(N·k), never "
                                   "dense); (I − αW)Z = Y solved by conjugate gradients: label, distribution and "
                                   "confidence per image, and the zero-shot label of the same vectors. Table "
                                   "pseudo_classes, producer propagate.")
    g = p.add_argument_group("corpus")
    g.add_argument("--corpus", required=True, help="the classification corpus whose images get labels; required")
    g.add_argument("--templates", default="default",
                   help="class prompt template set (default, aerial, openai, reclip_rs, or a file) "
                        "(default: %(default)s)")
    g.add_argument("--class-embeddings", metavar="ID",
                   help="class embeddings artifact with --embeddings (default: the cache of the images' model)")
    cli.add_vector_options(p, split=False)
    g = p.add_argument_group("propagation")
    g.add_argument("--k", type=int, default=K, help="neighbours per node in the graph (default: %(default)s)")
    g.add_argument("--alpha", type=float, default=ALPHA, help="diffusion weight α (default: %(default)s)")
    g.add_argument("--iterations", type=int, default=CG_ITERS,
                   help="conjugate-gradient iterations (default: %(default)s)")
    p.set_defaults(func=cmd_propagate)


def cmd_propagate(args) -> None:
    from clipstore.cli_pseudolabel import done, model_spec, store
    t0 = time.monotonic()
    art = label_propagation(store(args), corpus=args.corpus, model=model_spec(args), embeddings=args.embeddings,
                            class_embeddings=args.class_embeddings, templates=args.templates, k=args.k,
                            alpha=args.alpha, iterations=args.iterations, name=args.name,
                            batch_size=args.batch_size, workers=args.workers, wait=args.wait,
                            progress=not args.quiet)
    done("pseudolabel propagate", art, t0)
