"""Checks that stop an ingest before it does something the user did not mean: nonsense options,
and a new version that would silently lose most of the corpus (a typo in --images, a forgotten
--keep-missing). A refused run publishes nothing: the current version stays current, and the parts
it committed stay pending, so re-running with `replace=True` (`--replace`) finishes without
redoing work."""

from __future__ import annotations

from clipstore.warehouse.errors import InputError
from clipstore.warehouse.store import Artifact

MAX_SILENT_LOSS = 0.10   # a new version may lose at most this share of the current samples (or images)


def check_options(*, shard_size: int, workers: int | None, max_pixels: int, png_level: int) -> None:
    """InputError for option values that cannot mean anything."""
    for flag, value, low, high in (("--shard-size", shard_size, 1, None), ("--workers", workers, 1, None),
                                   ("--max-pixels", max_pixels, 1, None), ("png_level", png_level, 0, 9)):
        if value is None and flag == "--workers":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise InputError(f"{flag} {value!r} is not a valid value", fix=f"use a whole number {bounds}")


def check_replacement(current: Artifact | None, artifact_id: str, stats: dict, replace: bool) -> None:
    """Refuse (InputError) a version in which no image was found (no sample, and no entry
    rejected for its image's content: every image missing, e.g. a wrong --images), or one that
    loses more than MAX_SILENT_LOSS of the current version's samples or images; `replace`
    accepts it."""
    if replace:
        return
    new = stats["counts"]
    accept = "pass --replace (ingest(..., replace=True)) to make this version current anyway"
    no_image_found = not stats.get("rejects_by_stage", {}).get("decode")
    if new.get("samples", 0) == 0 and new.get("rejects", 0) > 0 and no_image_found:
        raise InputError(
            f"no entry became a sample and no image was found: all {new['rejects']:,} entries were rejected "
            f"({_reasons(stats)}); nothing was published"
            + (f", and the current version {current.artifact_id} stays current" if current else ""),
            where=artifact_id,
            fix="check --images and --image-map (`clipstore doctor FORMAT PATH` shows what is missing), "
                f"or --keep-missing to keep caption-only samples; {accept}")
    if current is None:
        return
    old = current.counts
    lost = {what: old.get(what, 0) - new.get(what, 0) for what in ("samples", "images")}
    over = [w for w, n in lost.items() if n > MAX_SILENT_LOSS * old.get(w, 0)]
    if not over:
        return
    raise InputError(
        f"this version would lose {' and '.join(f'{lost[w]:,} of {old[w]:,} {w}' for w in over)} "
        f"of the current version {current.artifact_id} ({old.get('samples', 0):,} samples, "
        f"{old.get('images', 0):,} with image -> {new.get('samples', 0):,}, {new.get('images', 0):,} with image; "
        f"rejects: {_reasons(stats) or 'none'}); nothing was published, the current version stays current",
        where=artifact_id,
        fix=f"check --images, --image-map and --keep-missing against the run that made the current version "
            f"(`clipstore versions {current.name}`); {accept}")


def _reasons(stats: dict, top: int = 3) -> str:
    reasons = sorted(stats.get("rejects_by_reason", {}).items(), key=lambda kv: -kv[1])
    return ", ".join(f"{n:,} {reason}" for reason, n in reasons[:top])
