"""Class-prompt template sets for class-name embeddings (zero-shot classifiers, ReCLIP anchors).

A class's vector is the renormalised mean of its normalised prompt embeddings, one prompt per
template (prompt ensembling, as in CLIP). A set is named (`default`, `aerial`, `openai`) or read from a text file
with one template per line; its digest (over the templates themselves) goes into the recipe and
into each class's item id, so editing a set never reuses stale vectors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipstore.warehouse.errors import InputError
from clipstore.warehouse.hashing import digest, text_id

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    # Remote sensing: overhead phrasings in the spirit of ReCLIP's RS templates.
    "default": (
        "a satellite photo of {}.",
        "an aerial photograph of {}.",
        "an aerial photo of {}.",
        "aerial view of the {}.",
        "satellite imagery of {}.",
        "a remote sensing image of {}.",
        "an overhead view of {}.",
        "a top-down photo of the {}.",
    ),
    "aerial": ("an aerial photograph of {}.",),   # the single RS zero-shot prompt of S-CLIP's evaluation
    "openai": ("a photo of a {}.",),              # CLIP's simple prompt; fashion zero-shot uses it
    "fashion": ("a photo of a {}.",),             # the seeds' fashion zero-shot prompt, under its task's name
    # ReCLIP's remote-sensing set: CLIP's 18 RESISC45 templates
    "reclip_rs": tuple(f"{view} of {article}{{}}." for article in ("", "a ", "the ")
                       for view in ("satellite imagery", "aerial imagery", "satellite photo", "aerial photo",
                                    "satellite view", "aerial view")),
}


@dataclass(frozen=True)
class TemplateSet:
    name: str
    templates: tuple[str, ...]

    @property
    def digest(self) -> str:
        return digest(list(self.templates))[:16]

    def prompts(self, classname: str) -> list[str]:
        return [t.replace("{}", classname) for t in self.templates]

    def recipe(self) -> dict:
        return {"name": self.name, "digest": self.digest, "templates": list(self.templates)}


def template_set(name_or_path: str) -> TemplateSet:
    """A named set, or a file of templates (one per line, each with one `{}` for the class name)."""
    if name_or_path in TEMPLATE_SETS:
        return TemplateSet(name_or_path, TEMPLATE_SETS[name_or_path])
    path = Path(name_or_path)
    if not path.is_file():
        raise InputError(f"unknown template set {name_or_path!r}",
                         fix=f"use one of {', '.join(TEMPLATE_SETS)}, or a text file with one template per line "
                             "such as 'a satellite photo of {}.'")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = [line for line in lines if line.count("{}") != 1]
    if not lines or bad:
        raise InputError(f"template file {path.name} needs one template per line, each with exactly one '{{}}'",
                         where=f"{path}" + (f": {bad[0]!r}" if bad else " is empty"),
                         fix="write lines like 'an aerial photograph of {}.'")
    return TemplateSet(path.stem, tuple(dict.fromkeys(lines)))


def class_item_id(classname: str, templates: TemplateSet) -> str:
    """Item id of a class's mean prompt vector: the name as prompted plus the template set."""
    return text_id("classname", classname, templates.digest)


def prompt_item_id(prompt: str) -> str:
    """Item id of one prompt's own vector (per-template rows)."""
    return text_id("prompt", prompt)
