"""`clipstore mine keywords|classnames|concepts|terms`: the mining stage's subcommands."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from clipstore.warehouse.errors import InputError


def _store(args):
    from clipstore.warehouse.store import Store
    return Store(args.store)


def _scope_options(s: argparse.ArgumentParser, what: str) -> None:
    g = s.add_argument_group(f"captions to {what} (a split role, or whole corpora)")
    g.add_argument("--split", help="split name, e.g. rs_all")
    g.add_argument("--role", choices=["labeled", "unlabeled", "train", "val", "test"],
                   help="role in the split (train = labeled + unlabeled)")
    g.add_argument("--corpus", action="append", default=[],
                   help="corpus (repeat for several); caption-only corpora count")
    g.add_argument("--source-split", choices=["train", "val", "test"],
                   help="with --corpus: only the captions of the sources' own split (S-CLIP mines 'train')")


def _match_options(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("captions to match against the vocabulary (default: every caption of the scope's corpora)")
    g.add_argument("--match-split", help="match the captions of this split (default: none)")
    g.add_argument("--match-role", choices=["labeled", "unlabeled", "train", "val", "test"],
                   help="role in --match-split (default: every role)")
    g.add_argument("--match-corpus", action="append", default=[], help="match the captions of this corpus (repeat)")


def _export_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--export-sclip", type=Path, metavar="DIR",
                   help="also write S-CLIP keyword files here (yake-50/100/200/300.txt: prefixes of one ranking)")
    s.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 300], help="list sizes to export")
    s.add_argument("--prefix", help="file name prefix (default: yake, class-name or keywords by origin)")


def _summary(kind: str, art, t0: float) -> str:
    from clipstore.cli import summary_line
    counts = ", ".join(f"{k} {v}" for k, v in art.counts.items() if not isinstance(v, dict))
    return summary_line(f"mine {kind} {art.name}", art, counts, t0)


def cmd_keywords(args) -> None:
    from clipstore.mining.keywords import mine_keywords
    from clipstore.mining.sclip_files import import_keywords
    t0, store = time.monotonic(), _store(args)
    if args.import_files:
        if not args.name:
            raise InputError("an imported keyword list needs a name", fix="add --name NAME, e.g. --name keywords.sclip")
        art = import_keywords(store, args.import_files, name=args.name, match_split=args.match_split,
                              match_role=args.match_role, match_corpora=args.match_corpus or None,
                              prefix=args.prefix or "yake", wait=args.wait)
    else:
        art = mine_keywords(store, split=args.split, role=args.role, corpora=args.corpus or None,
                            source_split=args.source_split, top=args.top, ngram=args.ngram,
                            dedup_lim=args.dedup_lim, dedup_func=args.dedup_func, window=args.window,
                            language=args.language, compat=args.compat, match_split=args.match_split,
                            match_role=args.match_role,
                            match_corpora=args.match_corpus or None, name=args.name, wait=args.wait,
                            progress=not args.quiet)
    _report("keywords", store, art, t0, args)


def _report(kind: str, store, art, t0: float, args) -> None:
    from clipstore.mining.sclip_files import export_sclip
    print(_summary(kind, art, t0))
    for note in art.stats.get("notes", []):
        print(f"  note: {note}")
    if art.stats.get("top"):
        print("  top: " + ", ".join(art.stats["top"][:15]))
    if args.export_sclip:
        for path in export_sclip(store, art.artifact_id, args.export_sclip, sizes=args.sizes, prefix=args.prefix):
            print(f"  wrote {path}")


def cmd_classnames(args) -> None:
    from clipstore.mining.classnames import mine_classnames
    t0, store = time.monotonic(), _store(args)
    overrides = dict(_pair(o) for o in args.override)
    art = mine_classnames(store, args.corpus, normalise=not args.raw_names, overrides=overrides or None,
                          name=args.name, match_split=args.match_split, match_role=args.match_role,
                          match_corpora=args.match_corpus or None, wait=args.wait)
    _report("classnames", store, art, t0, args)


def _pair(text: str) -> tuple[str, str]:
    raw, sep, name = text.partition("=")
    if not sep or not raw.strip() or not name.strip():
        raise InputError(f"--override {text!r} is not RAW=NAME", fix="e.g. --override playfields=playfields")
    return raw.strip(), name.strip()


def cmd_concepts(args) -> None:
    from clipstore.mining.concepts import mine_concepts
    t0 = time.monotonic()
    art = mine_concepts(_store(args), split=args.split, role=args.role, corpora=args.corpus or None,
                        min_images=args.min_images, min_length=args.min_length, max_df=args.max_df,
                        df_rule=args.df_rule, phrases=args.phrases, model=args.spacy_model,
                        require_trained=args.require_trained, workers=args.workers, name=args.name, wait=args.wait,
                        progress=not args.quiet)
    print(_summary("concepts", art, t0))


def cmd_terms(args) -> None:
    from clipstore.mining.terms import mine_terms
    t0 = time.monotonic()
    for corpus in args.corpus:
        art = mine_terms(_store(args), corpus, model=args.spacy_model, require_trained=args.require_trained,
                         workers=args.workers, wait=args.wait, progress=not args.quiet)
        print(_summary("terms", art, t0))


def add_parsers(sub) -> None:
    p = sub.add_parser("mine", help="keywords (YAKE), class names, concepts (spaCy) -> vocabularies in SQL",
                       description="Mine vocabularies from captions. Each vocabulary version is an artifact; "
                                   "its tables (keywords, caption_keywords, image_keywords, concepts, "
                                   "image_concepts, ...) are views in `clipstore sql`.")
    mine = p.add_subparsers(dest="what", required=True, metavar="WHAT")

    s = mine.add_parser("keywords", help="a ranked YAKE keyword vocabulary (S-CLIP's keyword lists)")
    _scope_options(s, "mine")
    _match_options(s)
    s.add_argument("--top", type=int, default=300, help="vocabulary size (default %(default)s)")
    s.add_argument("--ngram", type=int, default=2, help="YAKE max n-gram (default %(default)s)")
    s.add_argument("--dedup-lim", type=float, default=0.9, help="YAKE dedup threshold (default %(default)s)")
    s.add_argument("--dedup-func", choices=["seqm", "jaro", "levs"],
                   help="YAKE dedup function (default seqm; levs with --compat sclip)")
    s.add_argument("--compat", choices=["sclip"],
                   help="reproduce S-CLIP's lists: levs dedup (yake 0.4's seqm) and, without a scope, its scope "
                        "--corpus rsicd:train --corpus ucm_captions:train --corpus sydney_captions:train "
                        "(--corpus NAME:SPLIT keeps one source split of that corpus)")
    s.add_argument("--window", type=int, default=1, help="YAKE co-occurrence window (default %(default)s)")
    s.add_argument("--language", default="en", help="YAKE language (stop words)")
    s.add_argument("--name", help="vocabulary name (default keywords.<scope>)")
    _export_options(s)
    s.add_argument("--import", dest="import_files", type=Path, nargs="+", metavar="FILE",
                   help="import S-CLIP keyword files (or a folder of them) instead of running YAKE; needs --name")
    s.set_defaults(func=cmd_keywords)

    s = mine.add_parser("classnames", help="a merged, normalised class-name vocabulary from classification corpora")
    s.add_argument("--corpus", action="append", required=True, help="classification corpus (repeat)")
    _match_options(s)
    s.add_argument("--raw-names", action="store_true", help="keep folder names verbatim (the public code's choice)")
    s.add_argument("--override", action="append", default=[], metavar="RAW=NAME",
                   help="fix one normalised name by hand (repeat), e.g. playfields=playfields")
    _export_options(s)
    s.add_argument("--name", help="vocabulary name (default classnames.<corpora>)")
    s.set_defaults(func=cmd_classnames)

    s = mine.add_parser("concepts", help="the SemiCLIP concept vocabulary (spaCy nouns) and per-image multi-hot")
    _scope_options(s, "mine")
    s.add_argument("--min-images", type=int, default=5, help="keep concepts in at least this many images")
    s.add_argument("--min-length", type=int, default=3, help="keep concepts of at least this many characters")
    s.add_argument("--max-df", type=float, default=0.3, help="drop concepts in this share of images or more")
    s.add_argument("--df-rule", default="images", choices=["images", "vocab"],
                   help="df = n_images / images (correct, default) or / vocabulary size (the public code's quirk)")
    s.add_argument("--phrases", action="store_true", help="noun phrases as concepts too")
    s.add_argument("--spacy-model", default="en_core_web_sm",
                   help="trained spaCy pipeline when installed; otherwise the documented offline fallback")
    s.add_argument("--require-trained", action="store_true", help="fail instead of falling back when it is missing")
    s.add_argument("--workers", type=int, help="parsing processes (default: CPU count)")
    s.add_argument("--name", help="vocabulary name (default concepts.<scope>); give variants their own name, "
                                  "since a name means its newest version in SQL")
    s.set_defaults(func=cmd_concepts)

    s = mine.add_parser("terms", help="parse captions once: nouns, noun phrases, YAKE keyphrases per caption",
                        description="Parse every caption of a corpus once per extractor configuration (the "
                                    "terms artifact, table caption_terms); keywords and concepts reuse it. "
                                    "Incremental: new captions only; a killed run resumes.")
    s.add_argument("--corpus", action="append", required=True, help="corpus to parse (repeat for several); required")
    s.add_argument("--spacy-model", default="en_core_web_sm",
                   help="trained spaCy pipeline when installed; otherwise the documented offline fallback")
    s.add_argument("--require-trained", action="store_true",
                   help="fail instead of falling back when it is missing (default: fall back)")
    s.add_argument("--workers", type=int, help="parsing processes (default: CPU count)")
    s.set_defaults(func=cmd_terms)
