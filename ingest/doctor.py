"""`clipstore doctor FORMAT PATH`: check a raw layout before ingest and say what is missing.

It resolves the layout with the format's adapter and walks every entry the way ingest would, but
never reads image bytes: it counts entries, captions, images present and missing, parse rejects by
reason, splits and classes, and turns layout errors into what is wrong and how to fix it."""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from clipstore.ingest.adapters import IngestOptions, get_adapter
from clipstore.ingest.records import Reject, SourceRecord
from clipstore.warehouse.errors import ClipstoreError

EXAMPLES = 5
_VARIABLE = re.compile(r"'[^']*'|\"[^\"]*\"|\S*[/\\]\S*|\d+")   # quoted values, paths, numbers


def reason_kind(reason: str) -> str:
    """A reject reason without its entry-specific parts, so that alike reasons count together."""
    return _VARIABLE.sub("…", reason)


@dataclass
class DoctorReport:
    format: str
    path: Path
    layout: str
    error: str | None = None                 # the layout could not be resolved (what, where, fix)
    files: list[Path] = field(default_factory=list)
    image_root: Path | None = None
    preset: str | None = None
    entries: int = 0                         # everything the source yields: records and rejects
    records: int = 0
    captions: int = 0
    without_captions: int = 0
    images_present: int = 0
    missing: list[str] = field(default_factory=list)      # source keys whose image is missing
    missing_reasons: Counter = field(default_factory=Counter)
    rejects: Counter = field(default_factory=Counter)     # reason kind -> count
    reject_examples: dict[str, tuple[str, str]] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    splits: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    classes: list[tuple[str, str]] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The layout resolves and at least one entry would be ingested with its image."""
        return self.error is None and self.images_present > 0

    def lacks(self) -> list[str]:
        """What the layout is missing, in words a user can act on."""
        out = []
        if self.error is not None:
            return [self.error]
        if self.entries == 0:
            out.append("the source lists no entries at all")
        elif self.images_present == 0 and self.records:
            where = f" (looked in {self.image_root})" if self.image_root else ""
            out.append(f"no image of the {self.records} entries is present{where}: put the images there, "
                       "or pass --images DIR (and --image-map TSV when the names differ)")
        elif self.missing:
            out.append(f"{len(self.missing)} of {self.records} images are missing: ingest rejects those entries, "
                       "or keeps them caption-only with --keep-missing")
        if self.classes:
            empty = [raw for raw, _ in self.classes if not self.labels.get(raw)]
            if empty:
                out.append(f"{len(empty)} class(es) have no entry: {', '.join(empty[:10])}"
                           + (" …" if len(empty) > 10 else ""))
        if self.duplicates:
            out.append(f"{len(self.duplicates)} entries repeat a source key (ingest keeps the first), "
                       f"e.g. {', '.join(self.duplicates[:EXAMPLES])}")
        return out

    def render(self) -> str:
        lines = [f"clipstore doctor {self.format} {self.path}"]
        if self.error is not None:
            lines += ["", "NOT READY: the layout cannot be read", _indent(self.error), "",
                      "expected layout:", _indent(self.layout)]
            return "\n".join(lines) + "\n"
        if self.preset:
            lines.append(f"  preset:        {self.preset}")
        if self.files:
            shown = ", ".join(f.name for f in self.files[:8]) + (f" (+{len(self.files) - 8} more)"
                                                                 if len(self.files) > 8 else "")
            lines.append(f"  files read:    {shown}")
        if self.image_root is not None:
            state = "" if self.image_root.is_dir() else "  (does not exist)"
            lines.append(f"  image folder:  {self.image_root}{state}")
        rejected = sum(self.rejects.values())
        lines.append(f"  entries:       {self.entries} ({self.records} usable, {rejected} rejected while parsing)")
        lines.append(f"  captions:      {self.captions}" + (f" ({self.without_captions} entries have none)"
                                                           if self.without_captions and self.captions else ""))
        images = f"  images:        {self.images_present} present, {len(self.missing)} missing"
        if self.missing:
            images += f" (e.g. {', '.join(self.missing[:EXAMPLES])})"
        lines.append(images)
        for reason, n in self.missing_reasons.most_common(3):
            lines.append(f"                 {n} × {reason}")
        if self.splits:
            lines.append("  splits:        " + ", ".join(f"{s or '(none)'} {n}" for s, n in self.splits.items()))
        if self.classes is not None:
            counts = ", ".join(f"{raw} {self.labels.get(raw, 0)}" for raw, _ in self.classes[:12])
            more = f", … (+{len(self.classes) - 12})" if len(self.classes) > 12 else ""
            lines.append(f"  classes:       {len(self.classes)}: {counts}{more}")
        if self.rejects:
            lines.append(f"  parse rejects: {rejected}")
            for kind, n in self.rejects.most_common(8):
                key, reason = self.reject_examples[kind]
                shown = key if len(key) <= 80 else key[:80] + "…"
                lines.append(f"    {n} × {reason}" + (f"  [{shown}]" if key not in reason else ""))
        if self.notes:
            lines.append("  notes:")
            lines += [f"    - {note}" for note in self.notes]
        lacks = self.lacks()
        lines.append("")
        if self.ok:
            lines.append(f"READY: {self.images_present} entries would be ingested with their image.")
        else:
            lines.append("NOT READY: nothing would be ingested with an image.")
        lines += [f"  - {item}" for item in lacks]
        if not self.ok:
            lines += ["", "expected layout:", _indent(self.layout)]
        return "\n".join(lines) + "\n"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def doctor(fmt: str, path: str | Path, images: str | Path | None = None, image_map: str | Path | None = None,
           preset: str | None = None) -> DoctorReport:
    adapter = get_adapter(fmt)
    path = Path(path)
    report = DoctorReport(format=fmt, path=path, layout=adapter.layout)
    options = IngestOptions(images=Path(images) if images else None, image_map=Path(image_map) if image_map else None,
                            preset=preset or _guess_preset(fmt, path, images))
    report.preset = options.preset
    try:
        source = adapter.open(path, options)
        report.files, report.image_root, report.classes = source.files, source.image_root, source.classes
        _walk(source.records, report)
    except ClipstoreError as exc:
        report.error = _explain(exc)
        return report
    except OSError as exc:   # what the adapter did not foresee still becomes a report, not a traceback
        report.error = f"cannot read the layout: {exc.strerror or exc}" + (f"\nwhere: {exc.filename}"
                                                                           if exc.filename else "")
        return report
    report.notes = list(source.notes)
    return report


def _explain(exc: ClipstoreError) -> str:
    """what / where / fix, leaving out a fix that only repeats the expected layout (shown anyway)."""
    lines = [exc.what]
    if exc.where:
        lines.append(f"where: {exc.where}")
    if exc.fix and not exc.fix.startswith("expected layout:"):
        lines.append(f"fix:   {exc.fix}")
    return "\n".join(lines)


def _walk(records, report: DoctorReport) -> None:
    seen: set[str] = set()
    for item in records:
        report.entries += 1
        if isinstance(item, Reject):
            kind = reason_kind(item.reason)
            report.rejects[kind] += 1
            report.reject_examples.setdefault(kind, (item.source_key, item.reason))
            continue
        assert isinstance(item, SourceRecord)
        if item.source_key in seen:
            report.duplicates.append(item.source_key)
            continue
        seen.add(item.source_key)
        report.records += 1
        report.captions += len(item.captions)
        report.without_captions += not item.captions
        report.splits[item.split] += 1
        if item.label is not None:
            report.labels[item.label] += 1
        if item.image is None:
            report.missing.append(item.source_key)
            report.missing_reasons[reason_kind(item.missing or "no image")] += 1
        else:
            report.images_present += 1


def _guess_preset(fmt: str, path: Path, images) -> str | None:
    """For imagefolder without --preset: the preset the class folders match, so doctor checks it."""
    if fmt != "imagefolder":
        return None
    from clipstore.ingest.adapters.imagefolder import class_root, guess_preset
    root = Path(images) if images else class_root(path, None)
    if not root.is_dir():
        return None
    preset, _ = guess_preset([e.name for e in os.scandir(root) if e.is_dir()])
    return preset.name if preset is not None else None
