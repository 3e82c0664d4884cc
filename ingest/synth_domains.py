"""The two styled domains of `clipstore synth --domain source|target`.

Both draw the same ten scene classes, each defined by what is on the ground (crop plots, tree
crowns, a water body, roads, houses, cars, tanks, a runway) rather than by the ground itself:
every class is drawn on two of four terrains and every terrain carries five classes, so the
terrain alone names no class. The domains differ in how things look (the palette, the texture
of the ground, how structures and objects are outlined and shaded) and partly in their words
(some synonyms exist in one domain only); the classes, the object facts and the caption grammar
are the same. A model trained on one domain is thus a stand-in for a pretrained model on the
other: what it learned of layouts carries over, what it learned of colours and words only partly."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DOMAINS = ("source", "target")
TERRAINS = ("grass", "soil", "sand", "snow")
SCENE_TERRAINS = {  # two terrains per class, five classes per terrain
    "farmland": ("grass", "soil"), "forest": ("grass", "snow"), "lake": ("sand", "snow"),
    "river": ("grass", "sand"), "bridge": ("soil", "snow"), "residential": ("grass", "sand"),
    "parking": ("soil", "snow"), "industrial": ("sand", "soil"), "roundabout": ("grass", "snow"),
    "airport": ("sand", "soil"),
}
# How captions name each class (no shape word among them): the class name first (both domains use
# it, so prompts built from class names read the same in both), then a word of one domain only.
SYNONYMS = {
    "source": {"farmland": ("farmland", "cropland"), "forest": ("forest", "woodland"), "lake": ("lake", "pond"),
               "river": ("river", "stream"), "bridge": ("bridge", "viaduct"),
               "residential": ("residential area", "housing estate"), "parking": ("parking lot", "car park"),
               "industrial": ("industrial area", "factory site"), "roundabout": ("roundabout", "rotary"),
               "airport": ("airport", "airfield")},
    "target": {"farmland": ("farmland", "agricultural land"), "forest": ("forest", "woods"),
               "lake": ("lake", "reservoir"), "river": ("river", "waterway"), "bridge": ("bridge", "road bridge"),
               "residential": ("residential area", "suburb"), "parking": ("parking lot", "parking area"),
               "industrial": ("industrial area", "storage depot"), "roundabout": ("roundabout", "ring junction"),
               "airport": ("airport", "airstrip")},
}
# Object words per domain: (singular, plural) choices per shape; the first is shared.
SHAPE_WORDS = {
    "source": {"circle": (("circle", "circles"), ("dot", "dots")), "square": (("square", "squares"),),
               "triangle": (("triangle", "triangles"),), "cross": (("cross", "crosses"),)},
    "target": {"circle": (("circle", "circles"), ("disc", "discs")),
               "square": (("square", "squares"), ("block", "blocks")),
               "triangle": (("triangle", "triangles"),), "cross": (("cross", "crosses"),)},
}
AVOID_COLOURS = {"grass": (), "soil": (), "sand": ("yellow",), "snow": ("white",)}


@dataclass(frozen=True)
class Style:
    terrain: dict[str, tuple[int, int, int]]
    water: tuple[int, int, int]
    road: tuple[int, int, int]
    marking: tuple[int, int, int]        # road edges, runway dashes
    crops: tuple[tuple[int, int, int], ...]
    crown: tuple[int, int, int]
    roofs: tuple[tuple[int, int, int], ...]
    paved: tuple[int, int, int]
    tank: tuple[int, int, int]
    plane: tuple[int, int, int]
    colours: dict[str, tuple[int, int, int]]   # object colours (their names are what captions say)
    grain: float                          # fine pixel noise of the ground
    mottle: float                         # low-frequency blotches of the ground
    outline: tuple[int, int, int] | None  # object outline colour, None = flat fill
    blur: float                           # Gaussian blur radius before the objects (soft optics)
    haze: float                           # share of a grey veil over everything


STYLES = {
    # natural colour, sharp, fine-grained ground, flat objects
    "source": Style(
        terrain={"grass": (112, 150, 72), "soil": (150, 122, 88), "sand": (214, 192, 140), "snow": (226, 230, 238)},
        water=(40, 88, 168), road=(88, 88, 94), marking=(235, 235, 230),
        crops=((150, 185, 70), (90, 130, 45), (200, 180, 90)), crown=(32, 78, 38),
        roofs=((175, 80, 60), (150, 150, 155), (120, 60, 50)), paved=(128, 128, 130), tank=(225, 225, 225),
        plane=(240, 240, 240),
        colours={"red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (245, 225, 40),
                 "white": (250, 250, 250), "black": (15, 15, 15), "blue": (30, 70, 230), "purple": (150, 50, 200)},
        grain=8.0, mottle=0.0, outline=None, blur=0.0, haze=0.0),
    # another sensor in another season: a duller palette part-way to false colour (vegetation
    # olive-brown, water greyer, roads pale), blotchy soft ground under a light haze, outlined objects
    # in slightly different shades. How far the palette moves sets how much a source-trained model
    # still recognises: measured as in docs/ingest.md#synth.
    "target": Style(
        terrain={"grass": (131, 123, 80), "soil": (141, 120, 108), "sand": (203, 194, 166), "snow": (233, 233, 233)},
        water=(33, 66, 126), road=(123, 121, 120), marking=(165, 165, 166),
        crops=((166, 139, 78), (106, 98, 55), (204, 168, 114)), crown=(63, 59, 42),
        roofs=((137, 104, 104), (166, 166, 173), (96, 76, 82)), paved=(141, 139, 138), tank=(183, 187, 195),
        plane=(160, 160, 164),
        colours={"red": (200, 45, 45), "orange": (230, 150, 40), "yellow": (230, 230, 70),
                 "white": (240, 240, 240), "black": (30, 30, 30), "blue": (45, 90, 215), "purple": (140, 65, 185)},
        grain=3.0, mottle=18.0, outline=(20, 20, 20), blur=0.8, haze=0.12),
}


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
    terrain: str
    things: tuple[Thing, ...]

    def groups(self) -> list[tuple[int, str, str]]:
        """(count, colour, shape) per group, in drawing order."""
        kinds = list(dict.fromkeys((t.colour, t.shape) for t in self.things))
        return [(sum((t.colour, t.shape) == k for t in self.things), *k) for k in kinds]


SHAPES = ("circle", "square", "triangle", "cross")
COLOUR_NAMES = tuple(STYLES["source"].colours)


def scene_facts(rng: np.random.Generator, scene: str, size: int) -> Scene:
    """Terrain and 1-4 small objects in one or two groups, in distinct cells of a 3x3 grid."""
    terrain = SCENE_TERRAINS[scene][rng.integers(2)]
    allowed = [c for c in COLOUR_NAMES if c not in AVOID_COLOURS[terrain]]
    n_groups = int(rng.integers(1, 3))
    counts = [int(rng.integers(1, 4)) for _ in range(n_groups)]
    if sum(counts) > 4:
        counts[-1] = 4 - counts[0]
    kinds: list[tuple[str, str]] = []
    while len(kinds) < n_groups:
        kind = (allowed[rng.integers(len(allowed))], SHAPES[rng.integers(len(SHAPES))])
        if kind not in kinds:
            kinds.append(kind)
    cell = size / 3
    cells = rng.permutation(9)[: sum(counts)]
    things, i = [], 0
    for (colour, shape), count in zip(kinds, counts):
        for _ in range(count):
            row, col = divmod(int(cells[i]), 3)
            r = cell * rng.uniform(0.2, 0.3)   # small: the scene's structure stays visible around them
            slack = cell / 2 - r
            x, y = (col + 0.5) * cell + rng.uniform(-slack, slack), (row + 0.5) * cell + rng.uniform(-slack, slack)
            things.append(Thing(colour, shape, round(x, 2), round(y, 2), round(r, 2)))
            i += 1
    return Scene(scene, terrain, tuple(things))


# ---- drawing ------------------------------------------------------------------------------
def _jitter(rng, rgb, spread=12) -> tuple[int, ...]:
    return tuple(int(min(255, max(0, v + d))) for v, d in zip(rgb, rng.integers(-spread, spread + 1, 3)))


def _ground(rng, style: Style, terrain: str, s: int) -> np.ndarray:
    """Float RGB (s, s, 3): the terrain colour with fine grain and, per style, blotches."""
    img = np.asarray(style.terrain[terrain], np.float32) + rng.uniform(-10, 10, 3).astype(np.float32)
    img = img + style.grain * rng.standard_normal((s, s, 3), dtype=np.float32)
    if style.mottle:
        coarse = rng.standard_normal((6, 6), dtype=np.float32)
        blotches = np.asarray(Image.fromarray(coarse).resize((s, s), Image.BILINEAR))
        img = img + style.mottle * blotches[..., None]
    return img


def _band(draw, s, rng, colour, width, wiggle=True) -> list[tuple[float, float]]:
    """A water band from top to bottom, winding or straight; returns its centre line."""
    c, a = rng.uniform(0.35, 0.65), rng.uniform(0.05, 0.15) if wiggle else 0.0
    f, ph = rng.uniform(0.6, 1.4), rng.uniform()
    pts = [((c + a * np.sin(2 * np.pi * (f * y + ph))) * s, y * s) for y in np.linspace(-0.05, 1.05, 24)]
    draw.line(pts, fill=colour, width=max(2, int(width * s)), joint="curve")
    return pts


def _road(draw, s, style, p0, p1, width):
    draw.line([(p0[0] * s, p0[1] * s), (p1[0] * s, p1[1] * s)], fill=style.road, width=max(2, int(width * s)))


def draw_structure(rng, draw: ImageDraw.ImageDraw, style: Style, scene: str, s: int) -> None:
    """What makes the scene its class, drawn over the ground in unit coordinates times s."""
    u = rng.uniform
    if scene == "farmland":  # 2x2 or 2x3 plots of crop rows with narrow margins between them
        rows, cols = 2, int(rng.integers(2, 4))
        for i in range(rows):
            for j in range(cols):
                x0, y0 = (j + u(0.04, 0.1)) / cols * s, (i + u(0.04, 0.1)) / rows * s
                x1, y1 = (j + 1 - u(0.04, 0.1)) / cols * s, (i + 1 - u(0.04, 0.1)) / rows * s
                colour = _jitter(rng, style.crops[rng.integers(len(style.crops))], 10)
                dark = tuple(int(v * 0.75) for v in colour)
                draw.rectangle((x0, y0, x1, y1), fill=colour)
                period = u(0.035, 0.06) * s
                if rng.random() < 0.5:
                    for y in np.arange(y0, y1, period):
                        draw.line([(x0, y), (x1, y)], fill=dark, width=1)
                else:
                    for x in np.arange(x0, x1, period):
                        draw.line([(x, y0), (x, y1)], fill=dark, width=1)
    elif scene == "forest":  # many small crowns clustered round two or three centres
        centres = u(0.25, 0.75, (int(rng.integers(2, 4)), 2))
        for _ in range(int(rng.integers(45, 80))):
            cx, cy = centres[rng.integers(len(centres))] + rng.normal(0, 0.15, 2)
            r = u(0.025, 0.045) * s
            draw.ellipse((cx * s - r, cy * s - r, cx * s + r, cy * s + r), fill=_jitter(rng, style.crown, 14))
    elif scene == "lake":  # one compact water body of two or three overlapping ellipses
        cx, cy = u(0.38, 0.62, 2)
        for _ in range(int(rng.integers(2, 4))):
            ex, ey = cx + u(-0.1, 0.1), cy + u(-0.1, 0.1)
            rx, ry = u(0.14, 0.26) * s, u(0.14, 0.26) * s
            draw.ellipse((ex * s - rx, ey * s - ry, ex * s + rx, ey * s + ry), fill=style.water)
    elif scene == "river":  # a winding band across the whole image, nothing crosses it
        _band(draw, s, rng, style.water, u(0.08, 0.13))
    elif scene == "bridge":  # a straighter band crossed by a road with edge markings
        _band(draw, s, rng, style.water, u(0.1, 0.15), wiggle=rng.random() < 0.5)
        y, w = u(0.3, 0.7), u(0.05, 0.07)
        _road(draw, s, style, (0, y), (1, y + u(-0.1, 0.1)), w)
    elif scene == "residential":  # a road grid with small houses along it
        n = int(rng.integers(2, 4))
        lines = np.linspace(0, 1, n + 2)[1:-1] + u(-0.05, 0.05, n)
        for v in lines:
            _road(draw, s, style, (v, 0), (v, 1), 0.035)
            _road(draw, s, style, (0, v), (1, v), 0.035)
        for _ in range(int(rng.integers(18, 32))):
            hx, hy, hw = u(0.04, 0.96), u(0.04, 0.96), u(0.05, 0.08)
            roof = _jitter(rng, style.roofs[rng.integers(len(style.roofs))], 12)
            draw.rectangle((hx * s, hy * s, (hx + hw) * s, (hy + hw * u(0.7, 1.0)) * s), fill=roof)
    elif scene == "parking":  # a paved lot with rows of small cars
        x0, y0 = u(0.05, 0.25, 2)
        x1, y1 = x0 + u(0.55, 0.7), y0 + u(0.55, 0.7)
        draw.rectangle((x0 * s, y0 * s, x1 * s, y1 * s), fill=style.paved)
        for row in np.arange(y0 + 0.04, y1 - 0.08, 0.12):
            for col in np.arange(x0 + 0.03, x1 - 0.04, 0.06):
                if rng.random() < 0.75:
                    car = tuple(int(v) for v in rng.integers(40, 230, 3))
                    draw.rectangle((col * s, row * s, (col + 0.035) * s, (row + 0.07) * s), fill=car)
    elif scene == "industrial":  # a yard with two or three long sheds and a cluster of round tanks
        draw.rectangle((0.05 * s, 0.05 * s, 0.95 * s, 0.95 * s), fill=_jitter(rng, style.paved, 8))
        for _ in range(int(rng.integers(2, 4))):
            bx, by = u(0.08, 0.55), u(0.08, 0.7)
            draw.rectangle((bx * s, by * s, (bx + u(0.25, 0.4)) * s, (by + u(0.1, 0.16)) * s),
                           fill=_jitter(rng, style.roofs[1], 10))
        tx, ty = u(0.3, 0.7, 2)
        for _ in range(int(rng.integers(3, 6))):
            cx, cy, r = tx + u(-0.2, 0.2), ty + u(-0.2, 0.2), u(0.05, 0.08) * s
            draw.ellipse((cx * s - r, cy * s - r, cx * s + r, cy * s + r), fill=style.tank, outline=style.road)
    elif scene == "roundabout":  # a ring road with three or four roads leaving it
        cx, cy, r = u(0.4, 0.6), u(0.4, 0.6), u(0.13, 0.2)
        angles = rng.permutation(4)[: int(rng.integers(3, 5))] * np.pi / 2 + u(-0.3, 0.3)
        for a in angles:
            _road(draw, s, style, (cx, cy), (cx + 1.5 * np.cos(a), cy + 1.5 * np.sin(a)), 0.05)
        w = max(2, int(0.05 * s))
        draw.ellipse(((cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s), outline=style.road, width=w)
    elif scene == "airport":  # one long wide runway with a dashed centre line, planes beside it
        y, w = u(0.3, 0.55), u(0.12, 0.16)
        draw.rectangle((0, (y - w / 2) * s, s, (y + w / 2) * s), fill=style.road)
        for x in np.arange(u(0, 0.1), 1, 0.12):
            draw.line([(x * s, y * s), ((x + 0.06) * s, y * s)], fill=style.marking, width=1)
        for _ in range(int(rng.integers(1, 4))):
            px, py, span = u(0.15, 0.85), y + w / 2 + u(0.12, 0.3), u(0.06, 0.09)
            draw.rectangle(((px - span) * s, (py - 0.015) * s, (px + span) * s, (py + 0.015) * s), fill=style.plane)
            draw.rectangle(((px - 0.015) * s, (py - span) * s, (px + 0.015) * s, (py + span) * s), fill=style.plane)
    else:
        raise ValueError(f"no drawing for scene {scene!r}")


def _shape(draw, shape: str, x: float, y: float, r: float, fill, grow: float = 0.0) -> None:
    """One object shape; `grow` pixels wider all round (an outline is the grown shape drawn first)."""
    if shape == "circle":
        draw.ellipse((x - r - grow, y - r - grow, x + r + grow, y + r + grow), fill=fill)
    elif shape == "square":
        h = r * 0.85 + grow
        draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)
    elif shape == "triangle":
        g = grow * 1.6   # a triangle's sides sit closer to its centre
        draw.polygon([(x, y - r - g), (x + r * 0.95 + g, y + r * 0.7 + grow),
                      (x - r * 0.95 - g, y + r * 0.7 + grow)], fill=fill)
    else:  # cross
        arm, reach = r * 0.33 + grow, r + grow
        draw.rectangle((x - reach, y - arm, x + reach, y + arm), fill=fill)
        draw.rectangle((x - arm, y - reach, x + arm, y + reach), fill=fill)


def _draw_thing(draw, t: Thing, fill, outline) -> None:
    if outline:
        _shape(draw, t.shape, t.x, t.y, t.r, outline, grow=1.0)
    _shape(draw, t.shape, t.x, t.y, t.r, fill)


def render(rng: np.random.Generator, facts: Scene, size: int, domain: str) -> bytes:
    """PNG bytes: ground, structure (turned and flipped at random), optics, then the objects."""
    style = STYLES[domain]
    canvas = Image.fromarray(np.clip(_ground(rng, style, facts.terrain, size), 0, 255).astype(np.uint8))
    draw_structure(rng, ImageDraw.Draw(canvas), style, facts.scene, size)
    pixels = np.rot90(np.asarray(canvas), int(rng.integers(4)))
    canvas = Image.fromarray(np.ascontiguousarray(pixels[:, ::-1] if rng.random() < 0.5 else pixels))
    if style.blur:
        canvas = canvas.filter(ImageFilter.GaussianBlur(style.blur))
    if style.haze:
        veiled = np.asarray(canvas, np.float32) * (1 - style.haze) + 128 * style.haze
        canvas = Image.fromarray(np.rint(veiled).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for t in facts.things:
        fill = tuple(min(255, max(0, v + int(j))) for v, j in zip(style.colours[t.colour], rng.integers(-15, 16, 3)))
        _draw_thing(draw, t, fill, style.outline)
    pixels = np.asarray(canvas, np.float32) * rng.uniform(0.92, 1.08)
    pixels = pixels + 3 * rng.standard_normal((size, size, 3), dtype=np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
