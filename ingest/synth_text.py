"""The caption grammar of `clipstore synth`, shared by every domain: templates, number words and
the sentence builder. Only the words for scenes and shapes come from the domain, so two domains
say the same facts in the same sentence shapes with partly different words."""

from __future__ import annotations

import numpy as np

CAPTIONS_PER_IMAGE = 5
COUNT_WORDS = {1: ("a", "one"), 2: ("two", "2"), 3: ("three", "3"), 4: ("four", "4")}
# The first caption always names the scene and every object: ingest puts it in the shards' `txt`.
FULL_TEMPLATES = ("an aerial view of {a_scene} with {objects}", "{objects} lying near {a_scene}",
                  "{a_scene} seen from above where there {be} {objects}",
                  "a satellite image of {a_scene} containing {objects}", "in this {scene} there {be} {objects}")
PARTIAL_TEMPLATES = ("an aerial photo of {a_scene}", "{a_scene} seen from above", "there {be} {objects} in this image",
                     "top view of {objects}", "{a_scene} with {some_objects}",
                     "a remote sensing image showing {some_objects}")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def group_phrase(rng: np.random.Generator, count: int, colour: str, words: tuple[tuple[str, str], ...]) -> str:
    """"two red circles": `words` are the shape's (singular, plural) choices; one choice draws nothing."""
    number = COUNT_WORDS[count][rng.integers(2)]
    if number == "a":
        number = article(colour)
    singular, plural = words[rng.integers(len(words))] if len(words) > 1 else words[0]
    return f"{number} {colour} {singular if count == 1 else plural}"


def captions(rng: np.random.Generator, groups: list[tuple[int, str, str]], synonyms: tuple[str, ...],
             shape_words: dict[str, tuple[tuple[str, str], ...]]) -> list[str]:
    """Five captions in RSICD style (lower case, ending " ."): one full, four sampled partial or full."""
    templates = [FULL_TEMPLATES[rng.integers(len(FULL_TEMPLATES))]]
    rest = [t for t in FULL_TEMPLATES + PARTIAL_TEMPLATES if t != templates[0]]
    templates += [rest[i] for i in rng.choice(len(rest), CAPTIONS_PER_IMAGE - 1, replace=False)]
    out = []
    for template in templates:
        scene = synonyms[rng.integers(len(synonyms))]
        phrases = [group_phrase(rng, count, colour, shape_words[shape]) for count, colour, shape in groups]
        text = template.format(scene=scene, a_scene=f"{article(scene)} {scene}",
                               be="is" if groups[0][0] == 1 else "are", objects=" and ".join(phrases),
                               some_objects=phrases[rng.integers(len(phrases))])
        out.append(f"{text} .")
    return out
