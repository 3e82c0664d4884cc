"""`clipstore synth`: a synthetic, learnable remote-sensing corpus.

Each image is a top-down scene (one of SCENES, told apart by palette and layout) with 1-4
foreground objects in one or two groups of the same colour and shape. Captions are generated
from those facts only, so what a model can learn from the text is exactly what is drawn.
Everything about image `index` of stream `stream` comes from one numpy Generator seeded with
(seed, stream, index): any image regenerates on its own, and the output is byte-identical.
The classification set (zero-shot evaluation) comes from its own stream: no image is shared.

This module draws the default corpus (`synth`, whose classes differ by palette) and writes any
corpus; `--domain source|target` draws the two styled domains of synth_domains.py instead
(classes that differ by what is on the ground, see docs/ingest.md#synth)."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from clipstore.ingest import synth_domains, synth_text
from clipstore.ingest.synth_text import CAPTIONS_PER_IMAGE, COUNT_WORDS, FULL_TEMPLATES, PARTIAL_TEMPLATES
from clipstore.warehouse.errors import InputError

CAPTION_STREAM, CLASSIFICATION_STREAM, SPLIT_STREAM = 0, 1, 2
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
CLASSIFICATION_FRACTION = 0.2
DOMAINS = synth_domains.DOMAINS


class SceneClass(NamedTuple):
    synonyms: tuple[str, ...]             # how captions name it; no word of one class appears in another's
    avoid_colours: tuple[str, ...] = ()   # object colours that would not stand out against it


SCENES = {  # the class name is the folder name of the classification set
    "field": SceneClass(("field", "farmland", "cropland")),
    "forest": SceneClass(("forest", "woodland", "wooded area"), ("black",)),
    "lake": SceneClass(("lake", "pond", "reservoir"), ("blue",)),
    "river": SceneClass(("river", "stream", "waterway"), ("blue",)),
    "desert": SceneClass(("desert", "sandy desert", "arid region"), ("yellow",)),
    "city": SceneClass(("city", "urban area", "town")),
    "harbor": SceneClass(("harbor", "port", "marina"), ("blue", "white")),
    "airport": SceneClass(("airport", "airfield", "runway"), ("white",)),
    "beach": SceneClass(("beach", "coast", "shoreline"), ("blue", "white", "yellow")),
    "snowfield": SceneClass(("snowfield", "snowy plain", "frozen landscape"), ("white",)),
}
COLOURS = {"red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (245, 225, 40), "white": (250, 250, 250),
           "black": (15, 15, 15), "blue": (30, 70, 230), "purple": (150, 50, 200)}
SHAPES = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str
    x: float  # centre and radius in pixels
    y: float
    r: float


@dataclass(frozen=True)
class Scene:
    scene: str
    things: tuple[Thing, ...]

    def groups(self) -> list[tuple[int, str, str]]:
        """(count, colour, shape) per group, in drawing order."""
        kinds = list(dict.fromkeys((t.colour, t.shape) for t in self.things))
        return [(sum((t.colour, t.shape) == k for t in self.things), *k) for k in kinds]


def scene_facts(rng: np.random.Generator, scene: str, size: int) -> Scene:
    """Object groups placed in distinct cells of a 3x3 grid, so they never overlap and counts are exact."""
    allowed = [c for c in COLOURS if c not in SCENES[scene].avoid_colours]
    n_groups = int(rng.integers(1, 3))
    counts = [int(rng.integers(1, 4)) for _ in range(n_groups)]
    if sum(counts) > 4:
        counts[-1] = 4 - counts[0]
    kinds: list[tuple[str, str]] = []
    while len(kinds) < n_groups:  # two groups differ in colour or shape, else they would be one group
        kind = (allowed[rng.integers(len(allowed))], list(SHAPES)[rng.integers(len(SHAPES))])
        if kind not in kinds:
            kinds.append(kind)
    cell = size / 3
    cells = rng.permutation(9)[: sum(counts)]
    things, i = [], 0
    for (colour, shape), count in zip(kinds, counts):
        for _ in range(count):
            row, col = divmod(int(cells[i]), 3)
            r = cell * rng.uniform(0.28, 0.42)
            slack = cell / 2 - r  # jitter inside the cell without leaving it
            x, y = (col + 0.5) * cell + rng.uniform(-slack, slack), (row + 0.5) * cell + rng.uniform(-slack, slack)
            things.append(Thing(colour, shape, round(x, 2), round(y, 2), round(r, 2)))
            i += 1
    return Scene(scene, tuple(things))


def _noisy(rng, shape, colour, spread=8.0) -> np.ndarray:
    return np.asarray(colour, np.float32) + spread * rng.standard_normal((*shape, 3), dtype=np.float32)


def draw_background(rng: np.random.Generator, scene: str, s: int) -> np.ndarray:
    """Float RGB (s, s, 3): palette and layout per scene, then a random quarter turn and flip."""
    yy, xx = np.mgrid[0:s, 0:s] / s
    if scene == "field":  # crop rows in two alternating greens
        period = rng.uniform(0.08, 0.14)
        img = _noisy(rng, (s, s), (115, 165, 60))
        img[(yy / period + rng.uniform()) % 1 < 0.45] = (80, 125, 40)
    elif scene == "forest":  # dense canopy: dark green with lighter crowns
        img = _noisy(rng, (s, s), (30, 75, 35), 10)
        crowns = rng.random((s, s)) < 0.25
        img[crowns] = img[crowns] * 0.5 + np.asarray((60, 115, 55)) * 0.5
    elif scene == "lake":  # blue ellipse on grassland
        img = _noisy(rng, (s, s), (110, 140, 80))
        cx, cy = rng.uniform(0.35, 0.65, 2)
        rx, ry = rng.uniform(0.2, 0.35, 2)
        img[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1] = (40, 90, 170)
    elif scene == "river":  # sinuous band across brown land
        img = _noisy(rng, (s, s), (150, 130, 90))
        centre = rng.uniform(0.35, 0.65) + 0.12 * np.sin(2 * np.pi * (yy * rng.uniform(0.8, 1.5) + rng.uniform()))
        img[np.abs(xx - centre) < rng.uniform(0.07, 0.12)] = (45, 95, 165)
    elif scene == "desert":  # sand with diagonal dune shading
        shade = np.sin(2 * np.pi * (xx + yy * rng.uniform(0.3, 1.0)) * rng.uniform(2, 4) + rng.uniform(0, 6))
        img = _noisy(rng, (s, s), (212, 182, 128), 5) + 22 * shade[..., None]
    elif scene == "city":  # grey roads around blocks with roofs of varied grey
        img = _noisy(rng, (s, s), (95, 95, 100), 5)
        n = int(rng.integers(4, 6))
        starts, ends = [int(s * (k + 0.15) / n) for k in range(n)], [int(s * (k + 0.85) / n) for k in range(n)]
        for i in range(n):
            for j in range(n):
                img[starts[i]:ends[i], starts[j]:ends[j]] = rng.uniform(135, 190) + rng.uniform(-10, 10, 3)
    elif scene == "harbor":  # water on one side, grey quay with piers and moored boats
        edge = rng.uniform(0.45, 0.6)
        img = _noisy(rng, (s, s), (140, 140, 140), 6)
        img[yy < edge] = _noisy(rng, (s, s), (35, 80, 150))[yy < edge]
        for px in rng.uniform(0.1, 0.9, int(rng.integers(2, 4))):
            img[(np.abs(xx - px) < 0.03) & (yy > edge - 0.3)] = (150, 150, 150)
            img[(np.abs(xx - px - 0.07) < 0.025) & (np.abs(yy - edge + 0.15) < 0.06)] = (235, 235, 230)
    elif scene == "airport":  # dark runway with dashed centre line through grass, pale apron
        img = _noisy(rng, (s, s), (125, 150, 95))
        c = rng.uniform(0.4, 0.6)
        img[np.abs(yy - c) < 0.11] = (75, 75, 80)
        img[(np.abs(yy - c) < 0.015) & ((xx * 8) % 1 < 0.5)] = (240, 240, 240)
        img[(yy > c + 0.2) & (yy < c + 0.4) & (xx > 0.2) & (xx < 0.6)] = (170, 170, 165)
    elif scene == "beach":  # sand meets sea along a wavy line edged with surf
        edge = rng.uniform(0.4, 0.6) + 0.05 * np.sin(2 * np.pi * (xx * rng.uniform(1, 3) + rng.uniform()))
        img = _noisy(rng, (s, s), (228, 208, 155), 6)
        img[yy < edge] = _noisy(rng, (s, s), (40, 115, 175))[yy < edge]
        img[np.abs(yy - edge) < 0.04] = (235, 240, 240)
    elif scene == "snowfield":  # white with bluish wind ridges
        ridges = np.sin(2 * np.pi * (xx * rng.uniform(2, 5) + yy * rng.uniform(-2, 2) + rng.uniform()))
        shadow = np.clip(ridges, 0, 1)[..., None] * np.asarray((18, 14, 5))
        img = _noisy(rng, (s, s), (232, 236, 244), 4) - shadow
    else:
        raise ValueError(f"no drawing for scene {scene!r}")
    img = np.rot90(img, int(rng.integers(4)))
    return img[:, ::-1] if rng.random() < 0.5 else img


def render(rng: np.random.Generator, facts: Scene, size: int) -> bytes:
    """PNG bytes: background, objects in slightly jittered colours, global brightness and pixel noise."""
    canvas = Image.fromarray(np.clip(draw_background(rng, facts.scene, size), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for t in facts.things:
        fill = tuple(min(255, max(0, v + int(j))) for v, j in zip(COLOURS[t.colour], rng.integers(-15, 16, 3)))
        x, y, r = t.x, t.y, t.r
        if t.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif t.shape == "square":
            draw.rectangle((x - r * 0.85, y - r * 0.85, x + r * 0.85, y + r * 0.85), fill=fill)
        elif t.shape == "triangle":
            draw.polygon([(x, y - r), (x + r * 0.95, y + r * 0.7), (x - r * 0.95, y + r * 0.7)], fill=fill)
        else:  # cross
            arm = r * 0.33
            draw.rectangle((x - r, y - arm, x + r, y + arm), fill=fill)
            draw.rectangle((x - arm, y - r, x + arm, y + r), fill=fill)
    brightness = rng.uniform(0.92, 1.08)
    pixels = np.asarray(canvas, np.float32) * brightness + 3 * rng.standard_normal((size, size, 3), dtype=np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def captions(rng: np.random.Generator, facts: Scene) -> list[str]:
    """Five captions in RSICD style with this corpus's words (one word per shape)."""
    return synth_text.captions(rng, facts.groups(), SCENES[facts.scene].synonyms,
                               {shape: ((shape, plural),) for shape, plural in SHAPES.items()})


def _domain_code(domain: str | None) -> list[int]:
    """What a domain adds to every seed: nothing for the default corpus (its files stay as they were)."""
    return [] if domain is None else [1 + DOMAINS.index(domain)]


def classes(domain: str | None = None) -> list[str]:
    return list(SCENES) if domain is None else list(synth_domains.SCENE_TERRAINS)


def generate(seed: int, stream: int, index: int, size: int, domain: str | None = None):
    """Facts, PNG bytes and captions of one image, from its own Generator."""
    rng = np.random.default_rng([seed, stream, index, *_domain_code(domain)])
    scene = classes(domain)[index % len(classes(domain))]  # classes take turns: balanced
    if domain is None:
        facts = scene_facts(rng, scene, size)
        return facts, render(rng, facts, size), captions(rng, facts)
    facts = synth_domains.scene_facts(rng, scene, size)
    return (facts, synth_domains.render(rng, facts, size, domain),
            synth_text.captions(rng, facts.groups(), synth_domains.SYNONYMS[domain][scene],
                                synth_domains.SHAPE_WORDS[domain]))


def split_of(seed: int, n_images: int, domain: str | None = None) -> list[str]:
    """Split per image index: a seeded permutation cut 80/10/10."""
    order = np.random.default_rng([seed, SPLIT_STREAM, *_domain_code(domain)]).permutation(n_images)
    n_train, n_val = round(n_images * SPLIT_FRACTIONS["train"]), round(n_images * SPLIT_FRACTIONS["val"])
    splits = [""] * n_images
    for rank, i in enumerate(order):
        splits[i] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return splits


def corpus_names(domain: str | None = None) -> dict[str, str]:
    """The corpus names `clipstore ingest` gives the two folders of a synth output."""
    base = "synth" if domain is None else f"synth_{domain}"
    return {"captions": base, "classification": f"{base}_cls"}


FORMAT_VERSION = 2   # bump when the files written for the same spec change (2: entries carry "class")
DOMAIN_VERSION = 1   # the same for the styled domains' drawing


def default_classification(n_images: int) -> int:
    return max(len(SCENES), round(n_images * CLASSIFICATION_FRACTION))


def spec(seed: int, n_images: int, size: int, domain: str | None = None, n_classification: int | None = None) -> dict:
    common = {"dataset": "synth", "format_version": FORMAT_VERSION, "seed": seed, "size": size, "n_images": n_images,
              "n_classification": default_classification(n_images) if n_classification is None else n_classification,
              "streams": {"captions": CAPTION_STREAM, "classification": CLASSIFICATION_STREAM,
                          "split": SPLIT_STREAM},
              "splits": SPLIT_FRACTIONS, "captions_per_image": CAPTIONS_PER_IMAGE}
    grammar = {"count_words": {str(k): list(v) for k, v in COUNT_WORDS.items()},
               "templates": {"full": list(FULL_TEMPLATES), "partial": list(PARTIAL_TEMPLATES)}}
    if domain is None:
        return {**common,
                "classes": {k: {"synonyms": list(v.synonyms), "avoid_colours": list(v.avoid_colours)}
                            for k, v in SCENES.items()},
                "colours": {k: list(v) for k, v in COLOURS.items()}, "shapes": SHAPES, **grammar}
    style = synth_domains.STYLES[domain]
    return {**common, "domain": domain, "domain_version": DOMAIN_VERSION, "corpora": corpus_names(domain),
            "classes": {k: {"synonyms": list(synth_domains.SYNONYMS[domain][k]), "terrains": list(terrains)}
                        for k, terrains in synth_domains.SCENE_TERRAINS.items()},
            "terrains": {k: {"avoid_colours": list(v)} for k, v in synth_domains.AVOID_COLOURS.items()},
            "colours": {k: list(v) for k, v in style.colours.items()},
            "shapes": {shape: words[0][1] for shape, words in synth_domains.SHAPE_WORDS[domain].items()},
            "shape_words": {shape: [list(w) for w in words]
                            for shape, words in synth_domains.SHAPE_WORDS[domain].items()},
            "style": {k: v for k, v in vars(style).items() if k != "colours"}, **grammar}


def read_spec(directory: str | Path) -> dict | None:
    """DIR/synth.json, or None where DIR holds no synth output."""
    try:
        info = json.loads((Path(directory) / "synth.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("dataset") == "synth" else None


def is_current(directory: str | Path, *, seed: int = 0, n_images: int = 2000, size: int = 64,
               domain: str | None = None, n_classification: int | None = None) -> bool:
    """Whether DIR holds what `write_synthetic` with these arguments writes now."""
    want = json.loads(json.dumps(spec(seed, n_images, size, domain, n_classification)))
    return read_spec(directory) == want


def write_synthetic(directory: str | Path, *, seed: int = 0, n_images: int = 2000, size: int = 64,
                    domain: str | None = None, n_classification: int | None = None) -> dict:
    """Write DIR/captions (Karpathy JSON + images), DIR/classification/<class>/, DIR/synth.json and
    DIR/facts.jsonl (ground truth per captioned image). `domain`: None for the default corpus,
    "source" or "target" for a styled domain. `n_classification`: images of the classification
    set (default 20 % of n_images, at least one per class). Returns a summary with counts and seconds."""
    started = time.monotonic()
    directory = Path(directory)
    if domain is not None and domain not in DOMAINS:
        raise InputError(f"unknown synth domain {domain!r}", fix=f"use one of: {', '.join(DOMAINS)}")
    if n_images < 10:
        raise InputError(f"--images {n_images} is too few", fix="use at least 10 so that every split has images")
    if n_classification is not None and n_classification < len(SCENES):
        raise InputError(f"--classification-images {n_classification} is too few",
                         fix=f"use at least {len(SCENES)}, one image per class")
    if size < 32:
        raise InputError(f"--size {size} is too small to draw shapes", fix="use --size 32 or more")
    if directory.exists() and any(directory.iterdir()) and not (directory / "synth.json").is_file():
        raise InputError(f"{directory} exists and is not a synth output", where=str(directory),
                         fix="choose a new or empty folder; a previous `clipstore synth` output is replaced")
    info = spec(seed, n_images, size, domain, n_classification)
    names = classes(domain)
    # Build beside the target and swap in at the end: no half-written or stale files ever show.
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "captions" / "images").mkdir(parents=True)
    splits, entries, facts_lines = split_of(seed, n_images, domain), [], []
    caption_classes = dict.fromkeys(names, 0)
    for i in range(n_images):
        facts, png, texts = generate(seed, CAPTION_STREAM, i, size, domain)
        filename = f"{i}.png"
        (tmp / "captions" / "images" / filename).write_bytes(png)
        sentids = [i * CAPTIONS_PER_IMAGE + k for k in range(CAPTIONS_PER_IMAGE)]
        entries.append({"filename": filename, "imgid": i, "split": splits[i], "class": facts.scene,
                        "sentids": sentids,
                        "sentences": [{"raw": raw, "tokens": [w for w in raw.split() if w != "."], "imgid": i,
                                       "sentid": sid} for raw, sid in zip(texts, sentids)]})
        caption_classes[facts.scene] += 1
        terrain = {} if domain is None else {"terrain": facts.terrain}
        facts_lines.append(json.dumps({"filename": filename, "split": splits[i], "class": facts.scene,
                                       **terrain, "groups": facts.groups()}))
    (tmp / "captions" / "dataset.json").write_text(json.dumps({"images": entries, "dataset": "synth"}))
    (tmp / "facts.jsonl").write_text("\n".join(facts_lines) + "\n")
    per_class = dict.fromkeys(names, 0)
    for i in range(info["n_classification"]):
        facts, png, _ = generate(seed, CLASSIFICATION_STREAM, i, size, domain)
        (tmp / "classification" / facts.scene).mkdir(parents=True, exist_ok=True)
        (tmp / "classification" / facts.scene / f"{i}.png").write_bytes(png)
        per_class[facts.scene] += 1
    (tmp / "synth.json").write_text(json.dumps(info, indent=1))
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    seconds = time.monotonic() - started
    return {"dir": str(directory), "seed": seed, "size": size, "domain": domain, "spec": str(directory / "synth.json"),
            "corpora": corpus_names(domain),
            "captions": {"path": str(directory / "captions"), "images": n_images,
                         "captions": n_images * CAPTIONS_PER_IMAGE,
                         "splits": {s: splits.count(s) for s in SPLIT_FRACTIONS},
                         "classes": caption_classes},
            "classification": {"path": str(directory / "classification"), "images": info["n_classification"],
                               "classes": per_class},
            "seconds": round(seconds, 3),
            "images_per_second": round((n_images + info["n_classification"]) / max(seconds, 1e-9), 1)}
