"""`clipstore embed | pixels | index | knn | neighbors`: the features stage's subcommands."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

MODALITIES = ("image", "caption", "keyword", "concept", "classname")


def _store(args, create: bool = True):
    from clipstore.warehouse.store import Store
    return Store(args.store, create=create)


def _modalities(text: str) -> list[str]:
    chosen = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MODALITIES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown modality {', '.join(unknown) or text!r}; "
                                         f"choose from {', '.join(MODALITIES)}")
    return chosen


def _model_spec(args):
    from clipstore.features.models import ModelSpec
    return ModelSpec(model=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                     allow_download=args.allow_download, precision=args.precision, device=args.device)


def cmd_embed(args) -> None:
    from clipstore.warehouse.lock import check_writable
    check_writable(_store(args).root, wait=args.wait)   # before torch is imported: a refusal takes a second
    import torch
    from clipstore.features.embed import embed
    t0 = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    arts = embed(_store(args), model=_model_spec(args), corpus=args.corpus, split=args.split,
                 modality=tuple(args.modality), vocab=args.vocab, classnames_corpus=args.classnames_corpus,
                 templates=args.templates, per_template=args.per_template,
                 views=args.views, augment=args.augment, seed=args.seed, batch_size=args.batch_size,
                 workers=args.workers, pixel_cache=args.pixel_cache, wait=args.wait, progress=not args.quiet)
    for art in arts:
        counts = ", ".join(f"{k} {v}" for k, v in art.counts.items() if not isinstance(v, dict))
        print(f"embed {art.name}: {counts} -> {art.artifact_id}")
    print(f"({time.monotonic() - t0:.1f}s)")


def cmd_pixels(args) -> None:
    from clipstore.warehouse.lock import check_writable
    check_writable(_store(args).root, wait=args.wait)
    from clipstore.features.pixels import cache_pixels
    t0 = time.monotonic()
    if args.model is None and args.checkpoint is None and args.size is None:
        from clipstore.warehouse.errors import InputError
        raise InputError("say which preprocessing to cache: --size N or --model SPEC",
                         fix="--model takes size, resize mode and interpolation from the model's eval transform")
    model = _model_spec(args) if (args.model or args.checkpoint) else None
    arts = cache_pixels(_store(args), corpus=args.corpus, split=args.split, size=args.size, model=model,
                        resize_mode=args.resize_mode, interpolation=args.interpolation, fill_color=args.fill_color,
                        workers=args.workers, wait=args.wait, progress=not args.quiet)
    from clipstore.cli import summary_line
    for art in arts:
        mib = art.stats.get("bytes", 0) / 2**20
        print(summary_line(f"pixels {art.name}", art, f"images {art.counts.get('images')}, {mib:.1f} MiB"))
    print(f"({time.monotonic() - t0:.1f}s)")


def cmd_index(args) -> None:
    from clipstore.features.index import build_index
    t0 = time.monotonic()
    art = build_index(_store(args), args.embeddings, args.factory, modality=args.modality, view=args.view,
                      nprobe=args.nprobe, ef_search=args.ef_search, recall_k=args.recall_k,
                      recall_queries=args.recall_queries, seed=args.seed, wait=args.wait)
    recall = art.stats.get(f"recall_at_{args.recall_k}")
    kind = "exact" if art.stats.get("exact") else f"recall@{args.recall_k} {recall}"
    print(f"index {art.name}: {art.counts.get('vectors')} vectors, {kind} in {time.monotonic() - t0:.1f}s "
          f"-> {art.artifact_id}")


def cmd_knn(args) -> None:
    from clipstore.features.graph import build_knn_graph, build_split_graph
    t0 = time.monotonic()
    store = _store(args)
    if args.embeddings:
        if args.split or args.corpus or args.role:
            raise _usage("--embeddings names one artifact: leave out --split, --corpus and --role")
        art = build_knn_graph(store, args.embeddings, k=args.k, modality=args.modality, view=args.view,
                              method=args.method, nprobe=args.nprobe, ef_search=args.ef_search, seed=args.seed,
                              wait=args.wait)
    else:
        if not args.model and not args.checkpoint:
            raise _usage("a graph over --split / --corpus needs --model (the model whose vectors it links)")
        if args.view:
            raise _usage("a graph over --split / --corpus is over the plain view (--view 0)")
        art = build_split_graph(store, _model_spec(args), k=args.k, split=args.split, corpora=args.corpus,
                                roles=args.role, modality=args.modality, method=args.method, nprobe=args.nprobe,
                                ef_search=args.ef_search, seed=args.seed, batch_size=args.batch_size,
                                workers=args.workers, wait=args.wait, progress=not args.quiet)
    quality = "exact" if art.stats.get("exact") else f"recall {art.stats.get('recall')}"
    scope = ""
    if art.stats.get("corpora"):
        scope = " over " + ", ".join(f"{c} {n}" for c, n in art.stats["corpora"].items())
        if art.stats.get("roles"):
            scope += " (" + ", ".join(f"{r} {n}" for r, n in art.stats["roles"].items()) + ")"
    print(f"knn {art.name}: {_counts(art)}{scope}, {quality} in {time.monotonic() - t0:.1f}s -> {art.artifact_id}")


def _usage(message: str):
    from clipstore.warehouse.errors import InputError
    return InputError(message, fix="`clipstore knn --help` lists the options")


def cmd_dedup(args) -> None:
    from clipstore.features.dedup import audit_near_duplicates
    t0 = time.monotonic()
    art = audit_near_duplicates(_store(args), args.graph or args.embeddings, args.threshold, k=args.k,
                                modality=args.modality, method=args.method, wait=args.wait)
    print(f"dedup {art.name}: {_counts(art)} in {time.monotonic() - t0:.1f}s -> {art.artifact_id}")
    print('  see: clipstore sql "SELECT * FROM audit_near_duplicates ORDER BY sim DESC LIMIT 20"')


def _counts(art) -> str:
    return ", ".join(f"{k} {v}" for k, v in art.counts.items() if not isinstance(v, dict))


def cmd_neighbors(args) -> None:
    from clipstore.features.neighbors import neighbors, render_neighbors
    sys.stdout.write(render_neighbors(neighbors(_store(args, create=False), args.sample_id, k=args.k,
                                                model=args.model)))


def cmd_register_checkpoint(args) -> None:
    from clipstore.features.checkpoint_artifacts import register_checkpoint
    art = register_checkpoint(_store(args), args.path, args.name, model=args.model, wait=args.wait)
    print(f"checkpoint {art.name}: {art.stats.get('arch')}, {art.counts.get('tensors')} tensors, weights "
          f"{str(art.stats.get('weights_sha256'))[:12]} -> {art.artifact_id}  (use: --model {art.artifact_id})")


def _add_model_options(g, required: bool = False) -> None:
    g.add_argument("--model", required=required,
                   help="open_clip architecture (ViT-B-32, RN50, ...), the test models tiny-vit / tiny-rn, or a "
                        "checkpoint artifact id or name (`clipstore ls --kind checkpoint`); may be left out with "
                        "a clipstore checkpoint file, which names its architecture")
    g.add_argument("--pretrained", help="open_clip pretrained tag (e.g. openai); downloads need --allow-download "
                                        "(default: none)")
    g.add_argument("--allow-download", action="store_true",
                   help="allow fetching pretrained weights and Hugging Face tokenizers (default: off, offline)")
    g.add_argument("--checkpoint", type=Path, help="local weights: .safetensors, a torch state dict, or a clipstore "
                                                   "trainer checkpoint (loaded with weights_only=True)")
    g.add_argument("--precision", choices=["fp32", "fp16", "bf16"],
                   help="autocast precision (default: bf16 on GPU, fp32 on CPU); part of the fingerprints")
    g.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when visible, else cpu)")


def add_parsers(sub) -> None:
    s = sub.add_parser("embed", help="cache embeddings of images, captions, keywords, concepts, class prompts",
                       description="Embed items with an open_clip model into the store's cache. Image caches key "
                                   "on the image tower's fingerprint, text caches on the text tower's; only items "
                                   "not yet embedded are computed, an image another corpus already embedded with "
                                   "the same image tower is copied, and a killed run resumes per shard.")
    _add_model_options(s.add_argument_group("model"))
    g = s.add_argument_group("what to embed")
    g.add_argument("--corpus", action="append",
                   help="corpus whose images / captions / class names to embed (repeat for several)")
    g.add_argument("--split", help="embed every corpus of this split (labeled, unlabeled, val and test)")
    g.add_argument("--modality", type=_modalities, default=["image"],
                   help="comma list of image,caption,keyword,concept,classname (default: image)")
    g.add_argument("--vocab", help="vocabulary (id or name) for keyword / concept modalities "
                                   "(default: keywords.CORPUS / concepts.CORPUS of a single --corpus)")
    g.add_argument("--classnames-corpus", help="classification corpus for class prompts (default: --corpus)")
    g.add_argument("--templates", default="default",
                   help="class-prompt template set: default, aerial, openai, or a file of templates with {} "
                        "(default: %(default)s)")
    g.add_argument("--per-template", action="store_true",
                   help="also keep one vector per (class, template) (default: off)")
    g.add_argument("--views", type=int, default=0,
                   help="augmented views per image besides the plain one (default: %(default)s)")
    g.add_argument("--augment", help="augmentation spec for the views (default with --views: rot90,flip)")
    g.add_argument("--seed", type=int, default=0, help="seed of the augmented views (default: %(default)s)")
    g = s.add_argument_group("resources")
    g.add_argument("--batch-size", type=int, default=64, help="items per model forward (default: %(default)s)")
    g.add_argument("--workers", type=int,
                   help="image decoding processes (default: half the cores, at most one per shard; "
                        "0 for a job of up to 256 images)")
    g.add_argument("--threads", type=int, help="torch threads for the model (default: torch's choice)")
    g.add_argument("--pixel-cache", choices=["auto", "use", "off"], default="auto",
                   help="read images from the corpus's pixel cache of the model's preprocessing (`clipstore "
                        "pixels`): auto = when one exists, use = require it, off = always decode the shards "
                        "(default: %(default)s)")
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("pixels", help="cache decoded, resized uint8 images (memory-mapped) for training and embed",
                       description="Decode every image of a corpus once, resize / crop / pad it as a model's eval "
                                   "transform does, and store the uint8 pixels in memory-mapped parts: trainer "
                                   "epochs and embed runs then read bytes instead of decoding. Grows with the "
                                   "corpus (only new images are decoded) and resumes after a kill. "
                                   "See docs/pixels.md.")
    g = s.add_argument_group("what to cache")
    g.add_argument("--corpus", action="append", help="corpus whose images to cache (repeat for several)")
    g.add_argument("--split", help="cache every corpus of this split (labeled, unlabeled, val and test)")
    g = s.add_argument_group("preprocessing (--size, or a model's: --model)")
    g.add_argument("--size", type=int, help="output side in pixels, square (default: none; or give --model)")
    g.add_argument("--resize-mode", choices=["shortest", "longest", "squash"], default="shortest",
                   help="with --size: shortest = resize the shorter side then center-crop, longest = resize the "
                        "longer side then pad, squash = resize ignoring the aspect (default: %(default)s)")
    g.add_argument("--interpolation", choices=["bicubic", "bilinear"], default="bicubic",
                   help="with --size: the resampling filter (default: %(default)s)")
    g.add_argument("--fill-color", type=int, default=0,
                   help="with --size and --resize-mode longest: the padding's grey level (default: %(default)s)")
    _add_model_options(s.add_argument_group("model (its eval preprocessing instead of --size)"))
    g = s.add_argument_group("resources")
    g.add_argument("--workers", type=int,
                   help="decoding processes (default: one per core, at most one per part; 0 for up to 256 images)")
    s.set_defaults(func=cmd_pixels)

    s = sub.add_parser("index", help="a FAISS index over cached embeddings, with measured recall",
                       description="Build (or reuse) a FAISS index of one embeddings artifact; its recall@k "
                                   "against exact search is measured and recorded.")
    s.add_argument("--embeddings", required=True, help="embeddings artifact (id or name)")
    s.add_argument("--factory", default="Flat",
                   help='FAISS factory string: "Flat", "IVF256,Flat", "HNSW32", ... (default: %(default)s)')
    s.add_argument("--modality", help="only items of this modality (default: all)")
    s.add_argument("--nprobe", type=int, help="IVF cells probed at search time (default: FAISS's, 1)")
    s.add_argument("--ef-search", type=int, help="HNSW efSearch (default: FAISS's, 16)")
    s.add_argument("--view", type=int, default=0, help="which view of the items (0 = plain; default: %(default)s)")
    s.add_argument("--recall-k", type=int, default=10,
                   help="k of the recall@k recorded against exact search (default: %(default)s)")
    s.add_argument("--recall-queries", type=int, default=1000,
                   help="sampled queries for the recall measurement (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the recall sample and of IVF training (default: %(default)s)")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("knn", help="materialise a kNN graph (ids, similarities) of one artifact, a split or corpora",
                       description="The k nearest other items of every item, as one graph artifact (knn_nodes, "
                                   "knn_edges). Over one embeddings artifact (--embeddings), or over a split's "
                                   "corpora (--split: labeled + unlabeled + val + test, --role to narrow) and/or "
                                   "several corpora (--corpus, repeatable) with one model (--model), embedding "
                                   "what is missing first.")
    g = s.add_argument_group("vectors")
    g.add_argument("--embeddings", help="one embeddings artifact (id or name)")
    g.add_argument("--split", help="a split: the graph spans all its corpora")
    g.add_argument("--corpus", action="append", help="a corpus (repeat for several; instead of --split)")
    g.add_argument("--role", action="append", choices=["labeled", "unlabeled", "val", "test"],
                   help="with --split: only items of these roles (repeat; default: all roles)")
    g.add_argument("--modality", default="image", help="image, caption, ... (default: %(default)s)")
    g.add_argument("--view", type=int, default=0, help="which view (0 = plain; default: %(default)s)")
    _add_model_options(s.add_argument_group("model (with --split / --corpus)"))
    g = s.add_argument_group("graph")
    g.add_argument("--k", type=int, default=20, help="neighbors per item (default: %(default)s)")
    g.add_argument("--method", default="exact",
                   help='"exact" (blocked matmul) or a FAISS factory string (default: %(default)s)')
    g.add_argument("--nprobe", type=int, help="IVF cells probed (approximate methods; default: FAISS's)")
    g.add_argument("--ef-search", type=int, help="HNSW efSearch (approximate methods; default: FAISS's)")
    g.add_argument("--seed", type=int, default=0, help="seed of the recall sample (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=64,
                   help="items per forward when embedding what is missing (default: %(default)s)")
    g.add_argument("--workers", type=int, help="image decoding processes when embedding (default: as embed)")
    s.set_defaults(func=cmd_knn)

    s = sub.add_parser("dedup", help="embedding near-duplicates across splits and corpora (leakage audit)",
                       description="Pairs of images whose embeddings are nearly identical; the SQL view "
                                   "audit_near_duplicates flags pairs that sit in different split roles.")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--embeddings", help="image embeddings artifact (id or name); its kNN graph is built or reused")
    g.add_argument("--graph", help="an existing kNN graph artifact (id or name), e.g. one over a split")
    s.add_argument("--threshold", type=float, default=0.95,
                   help="cosine at or above which a pair is reported (default: %(default)s)")
    s.add_argument("--k", type=int, default=20, help="neighbors examined per image (default: %(default)s)")
    s.add_argument("--modality", default="image", help="modality of the graph (default: %(default)s)")
    s.add_argument("--method", default="exact",
                   help='graph search: "exact" or a FAISS factory string (default: %(default)s)')
    s.set_defaults(func=cmd_dedup)

    s = sub.add_parser("neighbors", help="print a sample's nearest images and captions",
                       description="The nearest images (over every corpus embedded with the same image tower) "
                                   "and the nearest distinct captions (the same model's text tower) of one "
                                   "sample's image.")
    s.add_argument("sample_id", metavar="SAMPLE_ID", help="a sample id from the samples table")
    s.add_argument("--k", type=int, default=5, help="images and captions to show (default: %(default)s)")
    s.add_argument("--model", help="restrict to embeddings of this model: its name (tiny-vit, ViT-B-32@openai), "
                                   "a fingerprint prefix or a checkpoint artifact (default: the newest embeddings)")
    s.set_defaults(func=cmd_neighbors)

    s = sub.add_parser("register-checkpoint", help="store a checkpoint file as an artifact usable as --model",
                       description="Copy a checkpoint into the store as a `checkpoint` artifact (content-addressed: "
                                   "the same weights register once); pass its id or name as --model.")
    s.add_argument("path", type=Path, help="a .safetensors / torch checkpoint file")
    s.add_argument("--name", required=True, help="the artifact's name")
    s.add_argument("--model", help="the architecture, when the file does not name it (default: from the file)")
    s.set_defaults(func=cmd_register_checkpoint)
