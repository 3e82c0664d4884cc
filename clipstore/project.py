"""The project file (`clipstore.toml`) and `clipstore project STAGE`: which corpora and splits
`project ingest` builds, which vocabularies `project mine` mines, which embeddings `project embed`
caches, which pixel caches `project pixels` fills. Every entry is checked against the stage's
options before anything runs: an unknown key, a missing one or a value of the wrong type is an
InputError naming the entry and the known keys."""

from __future__ import annotations

import difflib
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from clipstore.warehouse.errors import InputError

DEFAULT_CONFIG = Path("clipstore.toml")

# ---- the project file's schema: key -> type, per table. The keys are the keyword arguments of
# the stage's Python API (tests/test_project.py keeps them in step with the signatures); "path" is
# a string resolved against the data root; a trailing "!" marks a required key.
TYPES = {"str": (str,), "path": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
         "dict": (dict,), "list[str]": (list,), "list[int]": (list,), "str|list[str]": (str, list)}
ELEMENTS = {"list[str]": str, "list[int]": int, "str|list[str]": str}
NAMES = {"str": "a string", "path": "a path string", "int": "an integer", "float": "a number",
         "bool": "true or false", "dict": "a table", "list[str]": "a list of strings",
         "list[int]": "a list of integers", "str|list[str]": "a string or a list of strings"}

DATA = {"root": "path"}
CORPUS = {"name": "str!", "format": "str!", "path": "path!", "images": "path", "image_map": "path",
          "keep_missing": "bool", "preset": "str", "shard_size": "int", "workers": "int",
          "keep_original": "bool", "max_pixels": "int", "png_level": "int", "replace": "bool", "max_bytes": "int",
          "ray": "str"}
SPLIT = {"name": "str!", "corpora": "list[str]!", "unlabeled_corpora": "list[str]", "labeled_ratio": "float!",
         "seed": "int!", "compat": "str", "extend": "bool"}
_MATCH = {"match_split": "str", "match_role": "str", "match_corpora": "list[str]"}
MINE = {
    "keywords": {"split": "str", "role": "str", "corpora": "list[str]", "source_split": "str", "top": "int",
                 "ngram": "int", "dedup_lim": "float", "dedup_func": "str", "window": "int", "language": "str",
                 "unique_captions": "bool", "compat": "str", **_MATCH, "name": "str",
                 "export_sclip": "str", "export_sizes": "list[int]"},
    "classnames": {"corpora": "list[str]!", "normalise": "bool", "overrides": "dict", "name": "str", **_MATCH,
                   "export_sclip": "str", "export_sizes": "list[int]"},
    "concepts": {"split": "str", "role": "str", "corpora": "list[str]", "min_images": "int", "min_length": "int",
                 "max_df": "float", "df_rule": "str", "stoplist": "list[str]", "phrases": "bool", "model": "str",
                 "require_trained": "bool", "workers": "int", "name": "str"},
}
MODEL_KEYS = {"model": "str", "pretrained": "str", "checkpoint": "path", "allow_download": "bool",
              "precision": "str", "device": "str"}   # the ModelSpec; the rest are embed()'s options
EMBED = {**MODEL_KEYS, "corpus": "str|list[str]", "split": "str", "modality": "str|list[str]", "vocab": "str",
         "classnames_corpus": "str", "class_names": "list[str]", "templates": "str", "per_template": "bool",
         "views": "int", "augment": "str", "seed": "int", "batch_size": "int", "workers": "int",
         "pixel_cache": "str", "ray": "str"}
PIXELS = {**MODEL_KEYS, "corpus": "str|list[str]", "split": "str", "size": "int", "resize_mode": "str",
          "interpolation": "str", "fill_color": "int", "workers": "int"}   # model keys: --model's spec


def _train_schema() -> dict[str, str]:
    """[[train]]: the trainer's config fields (train/config.py), typed from the dataclass."""
    from clipstore.train.config import FIELDS
    kinds = {"str": "str", "int": "int", "float": "float", "bool": "bool", "list[str]": "list[str]"}
    return {name: kinds[f.type.split(" | ")[0]] for name, f in FIELDS.items()}


TRAIN = _train_schema()
TABLES = {"data": "[data]", "corpus": "[[corpus]]", "split": "[[split]]", "mine": "[[mine.*]]", "embed": "[[embed]]",
          "pixels": "[[pixels]]", "train": "[[train]]", "pseudolabel": "[[pseudolabel.*]]"}
# [[pseudolabel.<producer>]]: the keyword arguments of the producer's verb (PSEUDOLABEL_VERBS),
# the model spec inline as in [[embed]]; entries run in this order (keywords read nn / ot by name)
_VECTORS = {**MODEL_KEYS, "split": "str!", "embeddings": "list[str]", "logit_scale": "float", "name": "str",
            "batch_size": "int", "workers": "int"}
PSEUDOLABEL = {
    "nn": {**_VECTORS, "soft": "bool", "top": "int"},
    "ot": {**_VECTORS, "top": "int", "epsilon": "float", "iters": "int", "solver": "str", "memory": "int"},
    "keywords": {"source": "str!", "vocab": "str!", "one_caption": "int", "name": "str"},
    "classes": {**{k: v for k, v in _VECTORS.items() if k != "logit_scale"}, "k": "int", "method": "str",
                "ray": "str"},
    "concepts": {**_VECTORS, "vocab": "str!", "concept_embeddings": "str", "top": "int"},
    "propagate": {**MODEL_KEYS, "corpus": "str!", "embeddings": "list[str]", "class_embeddings": "str",
                  "templates": "str", "k": "int", "alpha": "float", "iterations": "int", "name": "str",
                  "batch_size": "int", "workers": "int"},
}
PSEUDOLABEL_VERBS = {"nn": "clipstore.features.pseudolabels.nn:nearest_labels",
                     "ot": "clipstore.features.pseudolabels.ot:transport_labels",
                     "keywords": "clipstore.features.pseudolabels.keywords:keyword_labels",
                     "classes": "clipstore.features.pseudolabels.classes:classes",
                     "concepts": "clipstore.features.pseudolabels.concepts:concepts",
                     "propagate": "clipstore.features.pseudolabels.propagate:label_propagation"}


@dataclass
class Project:
    data_root: Path
    corpora: list[dict]
    splits: list[dict]
    mine: dict           # {"keywords": [...], "classnames": [...], "concepts": [...]}: keyword arguments
    embed: list[dict]    # keyword arguments of features.embed.embed, with the model spec inline
    pixels: list[dict] = None   # keyword arguments of features.pixels.cache_pixels, the model spec inline
    config: Path = DEFAULT_CONFIG
    train: list[dict] = field(default_factory=list)   # fields of train.config.TrainConfig
    pseudolabel: dict = field(default_factory=dict)   # {"nn": [...], "ot": [...], ...}: keyword arguments


def _unknown(key: str, known, what: str, config: Path) -> InputError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InputError(f"unknown key {key!r} in {what}{hint}", where=str(config),
                      fix=f"known keys of {what.split(' #')[0]}: {', '.join(known)}")


def check_entry(entry, schema: dict[str, str], what: str, config: Path) -> dict:
    """One table of the project file against its schema; returns it unchanged when it fits."""
    if not isinstance(entry, dict):
        raise InputError(f"{what} is {type(entry).__name__} {entry!r}, not a table", where=str(config),
                         fix=f"write it as {what.split(' #')[0]} with key = value lines below")
    if "name" in entry and isinstance(entry["name"], str):
        what = f"{what} (name {entry['name']!r})"
    for key in entry:
        if key not in schema:
            raise _unknown(key, schema, what, config)
    missing = [k for k, t in schema.items() if t.endswith("!") and k not in entry]
    if missing:
        raise InputError(f"{what} lacks {', '.join(missing)}", where=str(config),
                         fix=f"add {' and '.join(f'{k} = ...' for k in missing)} to it")
    for key, value in entry.items():
        kind = schema[key].rstrip("!")
        element = ELEMENTS.get(kind)
        ok = isinstance(value, TYPES[kind]) and not (isinstance(value, bool) and kind in ("int", "float"))
        if ok and isinstance(value, list) and element is not None:
            ok = all(isinstance(v, element) and not isinstance(v, bool) for v in value)
        if not ok:
            raise InputError(f"{key} in {what} is {value!r}: it must be {NAMES[kind]}", where=str(config))
    return entry


def _entries(doc: dict, key: str, what: str, config: Path) -> list:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise InputError(f"{what} must be an array of tables", where=str(config),
                         fix=f"write each entry under its own {what} header (double brackets)")
    return value


def load(config: Path = DEFAULT_CONFIG, data_root: str | Path | None = None) -> Project:
    """Read and check the project file. Paths are resolved against the data root: `data_root`,
    else $CLIPSTORE_DATA, else [data].root relative to the file's folder."""
    config = Path(config)
    if not config.is_file():
        raise InputError(f"no project file {config}", fix="run from the repository root or pass --config FILE")
    try:
        doc = tomllib.loads(config.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{config} is not valid TOML: {exc}", where=str(config)) from None
    for key in doc:
        if key not in TABLES:
            raise _unknown(key, TABLES, "the project file", config)
    data = check_entry(doc.get("data", {}), DATA, "[data]", config)
    corpora = [check_entry(c, CORPUS, f"[[corpus]] #{i + 1}", config)
               for i, c in enumerate(_entries(doc, "corpus", "[[corpus]]", config))]
    splits = [check_entry(s, SPLIT, f"[[split]] #{i + 1}", config)
              for i, s in enumerate(_entries(doc, "split", "[[split]]", config))]
    mine = doc.get("mine", {})
    if not isinstance(mine, dict):
        raise InputError("mine must hold [[mine.keywords]], [[mine.classnames]] or [[mine.concepts]] tables",
                         where=str(config))
    for kind in mine:
        if kind not in MINE:
            raise _unknown(kind, MINE, "[mine]", config)
        for i, m in enumerate(_entries(mine, kind, f"[[mine.{kind}]]", config)):
            check_entry(m, MINE[kind], f"[[mine.{kind}]] #{i + 1}", config)
    embeds = [check_entry(e, EMBED, f"[[embed]] #{i + 1}", config)
              for i, e in enumerate(_entries(doc, "embed", "[[embed]]", config))]
    pixels = [check_entry(e, PIXELS, f"[[pixels]] #{i + 1}", config)
              for i, e in enumerate(_entries(doc, "pixels", "[[pixels]]", config))]
    trains = [check_entry(t, TRAIN, f"[[train]] #{i + 1}", config)
              for i, t in enumerate(_entries(doc, "train", "[[train]]", config))]
    pseudo = doc.get("pseudolabel", {})
    if not isinstance(pseudo, dict):
        raise InputError("pseudolabel must hold [[pseudolabel.nn]], [[pseudolabel.ot]], ... tables", where=str(config))
    for kind in pseudo:
        if kind not in PSEUDOLABEL:
            raise _unknown(kind, PSEUDOLABEL, "[pseudolabel]", config)
        for i, m in enumerate(_entries(pseudo, kind, f"[[pseudolabel.{kind}]]", config)):
            check_entry(m, PSEUDOLABEL[kind], f"[[pseudolabel.{kind}]] #{i + 1}", config)

    given = data_root or os.environ.get("CLIPSTORE_DATA")  # relative to the working directory
    root = Path(given) if given else config.parent / data.get("root", ".")
    resolved = []
    for c in corpora:
        entry = dict(c)
        for key, kind in CORPUS.items():
            if kind.rstrip("!") == "path" and key in c:
                entry[key] = root / c[key]
        resolved.append(entry)
    return Project(root, resolved, splits, {k: list(v) for k, v in mine.items()}, embeds, pixels, config, trains,
                   {k: list(v) for k, v in pseudo.items()})


# ---- the stages the runner knows -----------------------------------------------------------
Report = Callable[[object], None] | None


def _done(report: Report, art) -> None:
    if report is not None:
        report(art)


def ingest_all(store, project: Project, progress: bool = True, wait: bool = False, report: Report = None) -> list:
    """Ingest every configured corpus (incrementally), then build the configured splits."""
    from clipstore.ingest.pipeline import ingest
    from clipstore.ingest.splits import make_split
    artifacts = []
    for c in project.corpora:
        options = {k: v for k, v in c.items() if k not in ("format", "path")}
        artifacts.append(ingest(store, c["format"], c["path"], progress=progress, wait=wait, **options))
        _done(report, artifacts[-1])
    for s in project.splits:
        options = dict(s)
        artifacts.append(make_split(store, options.pop("name"), wait=wait, **options))
        _done(report, artifacts[-1])
    return artifacts


def mine_all(store, project: Project, progress: bool = True, wait: bool = False, report: Report = None) -> list:
    """Mine every configured vocabulary; unchanged inputs make each a no-op."""
    from clipstore.mining.classnames import mine_classnames
    from clipstore.mining.concepts import mine_concepts
    from clipstore.mining.keywords import mine_keywords
    from clipstore.mining.sclip_files import export_sclip
    artifacts = []
    for kind in MINE:
        for options in project.mine.get(kind, []):
            options = dict(options)
            export, sizes = options.pop("export_sclip", None), options.pop("export_sizes", None)
            if kind == "keywords":
                art = mine_keywords(store, progress=progress, wait=wait, **options)
            elif kind == "classnames":
                art = mine_classnames(store, options.pop("corpora"), wait=wait, **options)
            else:
                art = mine_concepts(store, progress=progress, wait=wait, **options)
            if export:
                export_sclip(store, art.artifact_id, project.config.parent / export,
                             **({"sizes": sizes} if sizes is not None else {}))
            artifacts.append(art)
            _done(report, art)
    return artifacts


def embed_all(store, project: Project, progress: bool = True, wait: bool = False, report: Report = None) -> list:
    """Cache the configured embeddings; only items not yet embedded are computed."""
    from clipstore.features.embed import embed
    from clipstore.features.models import ModelSpec
    artifacts = []
    for options in project.embed:
        options = dict(options)
        spec = ModelSpec(**{k: options.pop(k) for k in MODEL_KEYS if k in options})
        if isinstance(options.get("modality"), list):
            options["modality"] = tuple(options["modality"])
        for art in embed(store, model=spec, progress=progress, wait=wait, **options):
            artifacts.append(art)
            _done(report, art)
    return artifacts


def pixels_all(store, project: Project, progress: bool = True, wait: bool = False, report: Report = None) -> list:
    """Fill the configured pixel caches; only images not yet cached are decoded."""
    from clipstore.features.models import ModelSpec
    from clipstore.features.pixels import cache_pixels
    artifacts = []
    for options in project.pixels or []:
        options = dict(options)
        model = {k: options.pop(k) for k in MODEL_KEYS if k in options}
        for art in cache_pixels(store, model=ModelSpec(**model) if model else None, progress=progress, wait=wait,
                                **options):
            artifacts.append(art)
            _done(report, art)
    return artifacts


def train_all(store, project: Project, progress: bool = True, wait: bool = False, report: Report = None) -> list:
    """Train every configured run; a finished run is a no-op, a stopped one resumes."""
    from clipstore.train.config import resolve
    from clipstore.train.loop import train
    artifacts = []
    for options in project.train:
        out = train(store, resolve(overrides=options), progress=progress, wait=wait)
        artifacts.append(out.checkpoint if not out.noop else _noop(out.checkpoint))
        _done(report, artifacts[-1])
    return artifacts


def _noop(art):
    from dataclasses import replace
    return replace(art, noop=True)


def pseudolabel_all(store, project: Project, progress: bool = True, wait: bool = False,
                    report: Report = None) -> list:
    """Build every configured pseudo-label artifact, producers in PSEUDOLABEL order; unchanged
    inputs make each a no-op."""
    import importlib

    from clipstore.features.models import ModelSpec
    artifacts = []
    for kind, path in PSEUDOLABEL_VERBS.items():
        module, verb = path.split(":")
        fn = getattr(importlib.import_module(module), verb)
        for options in project.pseudolabel.get(kind, []):
            options = dict(options)
            if "model" in PSEUDOLABEL[kind]:
                spec = {k: options.pop(k) for k in MODEL_KEYS if k in options}
                options["model"] = ModelSpec(**spec) if spec else None
                options["progress"] = progress
            artifacts.append(fn(store, wait=wait, **options))
            _done(report, artifacts[-1])
    return artifacts


@dataclass(frozen=True)
class ProjectStage:
    run: Callable[..., list]
    help: str


# `clipstore project NAME` for each entry; a new stage (pseudolabel, train, eval) adds one here,
# with its table in the schema above.
STAGES = {
    "ingest": ProjectStage(ingest_all, "ingest every [[corpus]] (incrementally), then build every [[split]]"),
    "mine": ProjectStage(mine_all, "mine every [[mine.keywords]], [[mine.classnames]] and [[mine.concepts]]"),
    "embed": ProjectStage(embed_all, "cache every [[embed]] entry's embeddings"),
    "pixels": ProjectStage(pixels_all, "fill every [[pixels]] entry's pixel cache"),
    "train": ProjectStage(train_all, "train every [[train]] entry (options of `clipstore train`)"),
    "pseudolabel": ProjectStage(pseudolabel_all, "build every [[pseudolabel.*]] entry (nn, ot, keywords, classes, "
                                                 "concepts, propagate)"),
}


def summary(art) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in art.counts.items() if not isinstance(v, (dict, list)))
    counts = counts if len(counts) <= 90 else counts[:87] + "..."
    state = "up to date" if art.noop else "built"
    return f"{art.kind} {art.name}: {state} ({counts}) -> {art.artifact_id}"


def cmd_project(args) -> None:
    from clipstore.warehouse.store import Store
    project = load(args.config, args.data)  # checked before the store is opened or anything runs
    store = Store(args.store)
    t0 = time.monotonic()
    arts = STAGES[args.stage].run(store, project, progress=not args.quiet, wait=args.wait,
                                  report=lambda art: print(summary(art), flush=True))
    fresh = sum(not a.noop for a in arts)
    print(f"project {args.stage}: {len(arts)} artifacts, {fresh} built, {len(arts) - fresh} up to date "
          f"in {time.monotonic() - t0:.1f}s")


def add_parsers(sub) -> None:
    import argparse
    s = sub.add_parser("project", help="run the project file's stages (clipstore.toml): "
                                       + ", ".join(STAGES),
                       description=__doc__.split("\n\n")[0].replace("\n", " "))
    stages = s.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for parser, top in [(s, True)] + [(stages.add_parser(name, help=st.help, description=st.help), False)
                                      for name, st in STAGES.items()]:
        parser.add_argument("--config", type=Path, metavar="FILE", default=DEFAULT_CONFIG if top else argparse.SUPPRESS,
                            help=f"project file (default: ./{DEFAULT_CONFIG})")
        parser.add_argument("--data", default=None if top else argparse.SUPPRESS, metavar="DIR",
                            help="data root (default: $CLIPSTORE_DATA, else [data].root of the project file)")
        parser.set_defaults(func=cmd_project)
