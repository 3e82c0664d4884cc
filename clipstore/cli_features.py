"""`clipstore embed | index | knn | neighbors`: the features stage's subcommands."""

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
    arts = embed(_store(args), model=_model_spec(args), corpus=args.corpus, modality=tuple(args.modality),
                 vocab=args.vocab, classnames_corpus=args.classnames_corpus, templates=args.templates,
                 per_template=args.per_template,
                 views=args.views, augment=args.augment, seed=args.seed, batch_size=args.batch_size,
                 workers=args.workers, wait=args.wait, progress=not args.quiet)
    for art in arts:
        counts = ", ".join(f"{k} {v}" for k, v in art.counts.items() if not isinstance(v, dict))
        print(f"embed {art.name}: {counts} -> {art.artifact_id}")
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
    from clipstore.features.graph import build_knn_graph
    t0 = time.monotonic()
    art = build_knn_graph(_store(args), args.embeddings, k=args.k, modality=args.modality, view=args.view,
                          method=args.method, nprobe=args.nprobe, ef_search=args.ef_search, seed=args.seed,
                          wait=args.wait)
    quality = "exact" if art.stats.get("exact") else f"recall {art.stats.get('recall')}"
    print(f"knn {art.name}: {_counts(art)}, {quality} in {time.monotonic() - t0:.1f}s -> {art.artifact_id}")


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


def add_parsers(sub) -> None:
    s = sub.add_parser("embed", help="cache embeddings of images, captions, keywords, concepts, class prompts",
                       description="Embed items with an open_clip model into the store's cache. Only items not yet "
                                   "embedded for this model fingerprint are computed; a killed run resumes per shard.")
    g = s.add_argument_group("model")
    g.add_argument("--model", help="open_clip architecture (ViT-B-32, RN50, ...) or tiny-vit / tiny-rn "
                                   "(may be left out with a clipstore trainer checkpoint, which names it)")
    g.add_argument("--pretrained", help="open_clip pretrained tag (e.g. openai); downloads need --allow-download")
    g.add_argument("--allow-download", action="store_true", help="allow fetching pretrained weights from the hub")
    g.add_argument("--checkpoint", type=Path, help="local weights: .safetensors, a torch state dict, or a clipstore "
                                                   "trainer checkpoint (loaded with weights_only=True)")
    g.add_argument("--precision", choices=["fp32", "fp16", "bf16"],
                   help="autocast precision (default: bf16 on GPU, fp32 on CPU); part of the fingerprint")
    g.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when visible)")
    g = s.add_argument_group("what to embed")
    g.add_argument("--corpus", help="corpus whose images / captions / class names to embed")
    g.add_argument("--modality", type=_modalities, default=["image"],
                   help="comma list of image,caption,keyword,concept,classname (default image)")
    g.add_argument("--vocab", help="vocabulary (id or name) for keyword / concept modalities")
    g.add_argument("--classnames-corpus", help="classification corpus for class prompts (default --corpus)")
    g.add_argument("--templates", default="default",
                   help="class-prompt template set: default, aerial, openai, or a file of templates with {}")
    g.add_argument("--per-template", action="store_true", help="also keep one vector per (class, template)")
    g.add_argument("--views", type=int, default=0, help="augmented views per image besides the plain one")
    g.add_argument("--augment", help="augmentation spec for the views, e.g. rot90,flip")
    g.add_argument("--seed", type=int, default=0, help="seed of the augmented views")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--workers", type=int, help="image decoding processes (default: chosen from the CPU count)")
    g.add_argument("--threads", type=int, help="torch threads for the model (default: torch's choice)")
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("index", help="a FAISS index over cached embeddings, with measured recall")
    s.add_argument("--embeddings", required=True, help="embeddings artifact (id or name)")
    s.add_argument("--factory", default="Flat", help='FAISS factory string: "Flat", "IVF256,Flat", "HNSW32", ...')
    s.add_argument("--modality", help="only items of this modality")
    s.add_argument("--nprobe", type=int, help="IVF cells probed at search time")
    s.add_argument("--ef-search", type=int, help="HNSW efSearch")
    s.add_argument("--view", type=int, default=0, help="which view of the items (0 = plain)")
    s.add_argument("--recall-k", type=int, default=10, help="k of the recall@k recorded against exact search")
    s.add_argument("--recall-queries", type=int, default=1000, help="sampled queries for the recall measurement")
    s.add_argument("--seed", type=int, default=0, help="seed of the recall sample and of IVF training")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("knn", help="materialise the kNN graph (ids, similarities) of cached embeddings")
    s.add_argument("--embeddings", required=True, help="embeddings artifact (id or name)")
    s.add_argument("--k", type=int, default=20)
    s.add_argument("--modality", default="image")
    s.add_argument("--view", type=int, default=0)
    s.add_argument("--method", default="exact", help='"exact" (blocked matmul) or a FAISS factory string')
    s.add_argument("--nprobe", type=int)
    s.add_argument("--ef-search", type=int)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_knn)

    s = sub.add_parser("dedup", help="embedding near-duplicates across splits and corpora (leakage audit)",
                       description="Pairs of images whose embeddings are nearly identical; the SQL view "
                                   "audit_near_duplicates flags pairs that sit in different split roles.")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--embeddings", help="image embeddings artifact (id or name)")
    g.add_argument("--graph", help="an existing kNN graph artifact")
    s.add_argument("--threshold", type=float, default=0.95, help="cosine at or above which a pair is reported")
    s.add_argument("--k", type=int, default=20, help="neighbours examined per image")
    s.add_argument("--modality", default="image")
    s.add_argument("--method", default="exact")
    s.set_defaults(func=cmd_dedup)

    s = sub.add_parser("neighbors", help="print a sample's nearest images and captions")
    s.add_argument("sample_id")
    s.add_argument("--k", type=int, default=5)
    s.add_argument("--model", help="restrict to embeddings of this model")
    s.set_defaults(func=cmd_neighbors)
