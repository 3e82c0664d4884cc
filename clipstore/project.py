"""The project file (`clipstore.toml`): which corpora and splits `make ingest` builds.

    python -m clipstore.project ingest [--config clipstore.toml] [--store DIR] [--data DIR]
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
    return Project(root, corpora, list(doc.get("split", [])))


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clipstore.project", description=__doc__)
    ap.add_argument("action", choices=["ingest"])
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--store", default=None)
    ap.add_argument("--data", default=None, help="data root (default: [data].root of the project file)")
    args = ap.parse_args(argv)
    from clipstore.cli import exit_code_of
    from clipstore.warehouse.store import Store

    def ingest_and_report() -> None:
        for art in ingest_all(Store(args.store), load(args.config, args.data)):
            counts = ", ".join(f"{k}={v}" for k, v in art.counts.items() if not isinstance(v, dict))
            print(f"{art.kind:<7} {art.name:<18} {counts}  [{art.artifact_id}]")

    return exit_code_of(ingest_and_report)


if __name__ == "__main__":
    sys.exit(main())
