"""Karpathy-style caption JSON (RSICD, UCM_captions, Sydney_captions):
`{"images": [{"filename", "imgid", "split", "sentences": [{"raw", "tokens", "sentid"}]}]}`.
An image entry may also carry a scene label as `"class"` (`clipstore synth` writes one); without
it, an --image-map into class folders (UC Merced) gives the label."""

from __future__ import annotations

from pathlib import Path

from clipstore.ingest.adapters.base import (Adapter, IngestOptions, Source, image_folder, load_image_map,
                                            load_json, locate_annotation, mapped_record)
from clipstore.ingest.records import Reject
from clipstore.warehouse.errors import InputError


class KarpathyAdapter(Adapter):
    def __init__(self, fmt: str, annotation_names: tuple[str, ...], image_dirs: tuple[str, ...], summary: str):
        self.format = fmt
        self.annotation_names = annotation_names
        self.image_dirs = image_dirs
        self.summary = summary
        self.layout = (f"ROOT/{annotation_names[0]} (Karpathy JSON) and ROOT/{image_dirs[0]}/<filename>, "
                       "or PATH = the JSON file itself; --images DIR overrides the image folder")

    def open(self, path: Path, options: IngestOptions) -> Source:
        annotation, root = locate_annotation(path, self.annotation_names, f"{self.format} corpus", self.layout)
        image_root, notes = image_folder(root, options, self.image_dirs)
        mapping = load_image_map(options)
        doc = load_json(annotation)
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
            raise InputError(f"{annotation.name} is not a Karpathy caption file: no top-level 'images' list",
                             where=str(annotation), fix='expected {"images": [{"filename", "split", "sentences"}]}')
        labels = {_label(e, mapping) for e in doc["images"] if isinstance(e, dict)} - {None}
        return Source(records=self._records(doc["images"], image_root, mapping), files=[annotation],
                      image_root=image_root, notes=notes, classes=[(c, c) for c in sorted(labels)] or None)

    def _records(self, entries: list, image_root: Path, mapping: dict[str, str] | None):
        for i, entry in enumerate(entries):
            where = f"images[{i}]"
            if not isinstance(entry, dict):
                yield Reject(where, f"{where} is a {type(entry).__name__}, not an object")
                continue
            filename = entry.get("filename")
            if not isinstance(filename, str) or not filename:
                yield Reject(where, f"{where} has no 'filename' string")
                continue
            sentences = entry.get("sentences")
            if not isinstance(sentences, list):
                yield Reject(filename, f"{where} ({filename}) has no 'sentences' list")
                continue
            captions, sentids, bad = [], [], None
            for j, s in enumerate(sentences):
                raw = s.get("raw") if isinstance(s, dict) else None
                if raw is None and isinstance(s, dict) and isinstance(s.get("tokens"), list):
                    raw = " ".join(map(str, s["tokens"]))  # tokens only: the best text there is
                if not isinstance(raw, str):
                    bad = f"{where} ({filename}) sentence {j} has no 'raw' text"
                    break
                captions.append(raw)
                sentids.append(s.get("sentid"))  # sentence-level ids are the trustworthy ones
            if bad:
                yield Reject(filename, bad)
                continue
            label = _label(entry, mapping)
            if "class" in entry and label is None:
                yield Reject(filename, f"{where} ({filename}) has a 'class' that is not a non-empty string")
                continue
            yield mapped_record(image_root, filename, filename, mapping, captions=captions,
                                split=entry.get("split"), label=label,
                                meta={"imgid": entry.get("imgid"), "sentids": sentids})


def _label(entry: dict, mapping: dict[str, str] | None) -> str | None:
    """The entry's own "class", else the class folder an --image-map points into (UC Merced)."""
    if "class" in entry:
        label = entry["class"]
        return label if isinstance(label, str) and label.strip() else None
    filename = entry.get("filename")
    target = mapping.get(filename) if mapping is not None and isinstance(filename, str) else None
    return (Path(target).parent.name or None) if target else None


RSICD = KarpathyAdapter("rsicd", ("dataset_rsicd.json", "dataset_rsicd.reconstructed.json", "dataset.json"),
                        ("RSICD_images", "images"), "RSICD captions (Lu et al. 2017)")
UCM_CAPTIONS = KarpathyAdapter("ucm_captions", ("dataset.json",), ("images", "imgs"),
                               "UCM_captions (Qu et al. 2016)")
SYDNEY_CAPTIONS = KarpathyAdapter("sydney_captions", ("dataset.json",), ("images", "imgs"),
                                  "Sydney_captions (Qu et al. 2016)")
KARPATHY = KarpathyAdapter("karpathy", ("dataset.json",), ("images", "imgs"),
                           "any Karpathy-style caption JSON (e.g. `clipstore synth` output)")
