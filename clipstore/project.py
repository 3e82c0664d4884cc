"""The project file (`clipstore.toml`): which corpora and splits `make ingest` builds, which
vocabularies `make mine` mines and which embeddings `make embed` caches.

    python -m clipstore.project ingest|mine|embed [--config clipstore.toml] [--store DIR] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from clipstore.warehouse.errors import InputError

DEFAULT_CONFIG = Path("clipstore.toml")
PATH_OPTIONS = ("images", "image_map")


@dataclass
class Project:
    data_root: Path
    corpora: list[dict]
    splits: list[dict]
    mine: dict           # {"keywords": [...], "classnames": [...], "concepts": [...]}: keyword arguments
    embed: list[dict]    # keyword arguments of features.embed.embed, with the model spec inline


def load(config: Path = DEFAULT_CONFIG, data_root: str | Path | None = None) -> Project:
    if not config.is_file():
        raise InputError(f"no project file {config}", fix="run from the repository root or pass --config")
    try:
        doc = tomllib.loads(config.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{config} is not valid TOML: {exc}", where=str(config)) from None
    given = data_root or os.environ.get("CLIPSTORE_DATA")  # relative to the working directory
    root = Path(given) if given else config.parent / doc.get("data", {}).get("root", ".")
    corpora = []
    for c in doc.get("corpus", []):
        missing = {"name", "format", "path"} - set(c)
        if missing:
            raise InputError(f"a [[corpus]] entry lacks {', '.join(sorted(missing))}", where=str(config))
        entry = dict(c)
        entry["path"] = root / c["path"]
        for key in PATH_OPTIONS:
            if key in c:
                entry[key] = root / c[key]
        corpora.append(entry)
    return Project(root, corpora, list(doc.get("split", [])), dict(doc.get("mine", {})), list(doc.get("embed", [])))


def ingest_all(store, project: Project, progress: bool = True) -> list:
    """Ingest every configured corpus (incrementally), then build the configured splits."""
    from clipstore.ingest.pipeline import ingest
    from clipstore.ingest.splits import make_split
    artifacts = []
    for c in project.corpora:
        options = {k: v for k, v in c.items() if k not in ("format", "path")}
        artifacts.append(ingest(store, c["format"], c["path"], progress=progress, **options))
    for s in project.splits:
        artifacts.append(make_split(store, s["name"], corpora=s["corpora"],
                                    unlabeled_corpora=s.get("unlabeled_corpora", []),
                                    labeled_ratio=s["labeled_ratio"], seed=s["seed"], compat=s.get("compat")))
    return artifacts


def mine_all(store, project: Project, progress: bool = True) -> list:
    """Mine every configured vocabulary; unchanged inputs make each a no-op."""
    from clipstore.mining.classnames import mine_classnames
    from clipstore.mining.concepts import mine_concepts
    from clipstore.mining.keywords import mine_keywords
    from clipstore.mining.sclip_files import export_sclip
    artifacts = []
    for options in project.mine.get("keywords", []):
        options = dict(options)
        export = options.pop("export_sclip", None)
        art = mine_keywords(store, progress=progress, **options)
        if export:
            export_sclip(store, art.artifact_id, Path(export))
        artifacts.append(art)
    for options in project.mine.get("classnames", []):
        options = dict(options)
        artifacts.append(mine_classnames(store, options.pop("corpora"), **options))
    for options in project.mine.get("concepts", []):
        artifacts.append(mine_concepts(store, progress=progress, **options))
    return artifacts


def embed_all(store, project: Project, progress: bool = True) -> list:
    """Cache the configured embeddings; only items not yet embedded are computed."""
    from clipstore.features.embed import embed
    from clipstore.features.models import ModelSpec
    artifacts = []
    for options in project.embed:
        options = dict(options)
        spec = ModelSpec(**{k: options.pop(k) for k in ("model", "pretrained", "checkpoint", "allow_download",
                                                          "precision", "device") if k in options})
        if "modality" in options:
            options["modality"] = tuple(options["modality"])
        artifacts.extend(embed(store, model=spec, progress=progress, **options))
    return artifacts


STAGES = {"ingest": ingest_all, "mine": mine_all, "embed": embed_all}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clipstore.project", description=__doc__)
    ap.add_argument("action", choices=sorted(STAGES))
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--store", default=None)
    ap.add_argument("--data", default=None, help="data root (default: [data].root of the project file)")
    args = ap.parse_args(argv)
    from clipstore.cli import exit_code_of
    from clipstore.warehouse.store import Store

    def run_and_report() -> None:
        for art in STAGES[args.action](Store(args.store), load(args.config, args.data)):
            counts = ", ".join(f"{k}={v}" for k, v in art.counts.items() if not isinstance(v, dict))
            print(f"{art.kind:<10} {art.name:<28} {counts[:90]}  [{art.artifact_id}]")

    return exit_code_of(run_and_report)


if __name__ == "__main__":
    sys.exit(main())
