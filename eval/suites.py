"""Named evaluation suites (the seeds' benchmark sets) and TOML suite files.

A suite is a list of tasks. `resolve` keeps those whose corpus is ingested and lists the others
with the command that would ingest them, so a suite runs whatever the store holds."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from clipstore.eval.run import RETRIEVAL, ZEROSHOT, Task, task_from_dict
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.store import Store

D = "../shared/data"    # where the project's real data sit (clipstore.toml's [data].root)

# corpus -> how to ingest it (paths as in clipstore.toml; the ones the shared data lack are placeholders)
INGEST = {
    "rsicd_cls": f"clipstore ingest rsicd_cls {D}/rsicd",
    "ucm_cls": f"clipstore ingest imagefolder {D}/ucmerced_landuse/Images --name ucm_cls",
    "whu_rs19": "clipstore ingest imagefolder WHU-RS19/ --name whu_rs19",
    "rsscn7": "clipstore ingest imagefolder RSSCN7/ --name rsscn7",
    "aid": "clipstore ingest imagefolder AID/ --name aid",
    "rsicd": f"clipstore ingest rsicd {D}/rsicd/dataset_rsicd.reconstructed.json --images {D}/rsicd/RSICD_images",
    "ucm_captions": (f"clipstore ingest ucm_captions {D}/ucm_captions --images {D}/ucmerced_landuse "
                     f"--image-map {D}/ucmerced_landuse/ucm_captions_filename_map.tsv"),
    "sydney_captions": f"clipstore ingest sydney_captions {D}/sydney_captions --images {D}/sydney_captions/imgs",
    "fashion200k": "clipstore ingest fashion200k fashion200k/",
    "fashiongen": "clipstore ingest fashiongen fashiongen/",
    "polyvore": "clipstore ingest polyvore polyvore_outfits/",
    "fashion_products": f"clipstore ingest fashion_products {D}/fashion_product_images_small",
    "fashion200k_subcls": "no ingest format gives Fashion200k's subcategories as classes yet",
    "fashiongen_subcls": "no ingest format gives FashionGen's subcategories as classes yet",
    "synth": "clipstore synth out/synth && clipstore ingest karpathy out/synth/captions --name synth",
    "synth_cls": "clipstore synth out/synth && clipstore ingest imagefolder out/synth/classification --name synth_cls",
}


def _retrieval(*corpora: str, split: str = "val") -> list[Task]:
    return [Task(c, RETRIEVAL, protocol=p, split=split) for c in corpora for p in ("all", "one-caption")]


def _zeroshot(*corpora: str, templates: str) -> list[Task]:
    return [Task(c, ZEROSHOT, templates=templates) for c in corpora]


SUITES: dict[str, list[Task]] = {
    "rs": _zeroshot("rsicd_cls", "ucm_cls", "whu_rs19", "rsscn7", "aid", templates="aerial")
          + _retrieval("rsicd", "ucm_captions", "sydney_captions"),
    "fashion": _zeroshot("fashion200k", "fashion200k_subcls", "fashiongen", "fashiongen_subcls", "polyvore",
                         "fashion_products", templates="fashion")
               + _retrieval("fashion200k", "polyvore", split="test") + _retrieval("fashiongen")
               + _retrieval("fashion_products", split="all"),   # the real set has no splits
    "synth": _zeroshot("synth_cls", templates="aerial") + _retrieval("synth"),
}


@dataclass
class Resolved:
    name: str
    tasks: list[Task]                 # those whose corpus is ingested
    missing: list[tuple[Task, str]]   # (task, how to ingest its corpus)


def load_suite(ref: str) -> tuple[str, list[Task]]:
    """A named suite, or a TOML file of [[task]] rows (corpus, task, protocol, templates, split,
    raw_names, seed)."""
    if ref in SUITES:
        return ref, list(SUITES[ref])
    path = Path(ref)
    if not path.is_file():
        raise InputError(f"unknown suite {ref!r}",
                         fix=f"use one of {', '.join(SUITES)}, or a TOML file of [[task]] rows")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"suite file {path.name} is not valid TOML: {exc}", where=str(path)) from None
    rows = doc.get("task")
    if not isinstance(rows, list) or not rows:
        raise InputError(f"suite file {path.name} has no [[task]] rows", where=str(path),
                         fix='write rows like [[task]] corpus = "ucm_cls" task = "zeroshot" templates = "aerial"')
    return str(doc.get("name") or path.stem), [task_from_dict(dict(r), f"{path} row {i + 1}")
                                                for i, r in enumerate(rows)]


def resolve(store: Store, ref: str) -> Resolved:
    name, tasks = load_suite(ref)
    ingested = {a.name for a in store.current_all("corpus")}
    have = [t for t in tasks if t.corpus in ingested]
    missing = [(t, INGEST.get(t.corpus, f"clipstore ingest FORMAT PATH --name {t.corpus}"))
               for t in tasks if t.corpus not in ingested]
    return Resolved(name, have, missing)
