"""Karpathy-style caption JSON (RSICD, UCM_captions, Sydney_captions):
`{"images": [{"filename", "imgid", "split", "sentences": [{"raw", "tokens", "sentid"}]}]}`."""

from __future__ import annotations

from pathlib import Path

from clipstore.ingest.adapters.base import (Adapter, IngestOptions, Source, find_first, load_json,
                                            read_image_map, record_with_image, require_path)
from clipstore.ingest.records import Reject, SourceRecord
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
        require_path(path, f"{self.format} corpus", self.layout)
        if path.is_dir():
            annotation = find_first(path, self.annotation_names)
            if annotation is None:
                raise InputError(f"no annotation file in {path}", where=str(path),
                                 fix=f"expected one of {', '.join(self.annotation_names)}; layout: {self.layout}")
            root = path
        else:
            annotation, root = path, path.parent
        image_root = options.images or find_first(root, self.image_dirs) or root / self.image_dirs[0]
        mapping = read_image_map(options.image_map) if options.image_map else None
        doc = load_json(annotation)
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
            raise InputError(f"{annotation.name} is not a Karpathy caption file: no top-level 'images' list",
                             where=str(annotation), fix='expected {"images": [{"filename", "split", "sentences"}]}')
        notes = [] if image_root.is_dir() else [f"image folder {image_root} does not exist: every image is missing"]
        return Source(records=self._records(doc["images"], image_root, mapping), files=[annotation],
                      image_root=image_root, notes=notes)

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
            target = mapping.get(filename) if mapping is not None else filename
            if target is None:
                yield Reject(filename, f"{filename} is not in the --image-map file")
                continue
            label = Path(target).parent.name if mapping is not None and Path(target).parent.name else None
            meta = {"imgid": entry.get("imgid"), "sentids": sentids}
            if mapping is not None:
                meta["image_path"] = target
            yield record_with_image(image_root, target, filename, captions=captions,
                                    split=entry.get("split"), label=label, meta=meta)


RSICD = KarpathyAdapter("rsicd", ("dataset_rsicd.json", "dataset_rsicd.reconstructed.json", "dataset.json"),
                        ("RSICD_images", "images"), "RSICD captions (Lu et al. 2017)")
UCM_CAPTIONS = KarpathyAdapter("ucm_captions", ("dataset.json",), ("images", "imgs"),
                               "UCM_captions (Qu et al. 2016)")
SYDNEY_CAPTIONS = KarpathyAdapter("sydney_captions", ("dataset.json",), ("images", "imgs"),
                                  "Sydney_captions (Qu et al. 2016)")
KARPATHY = KarpathyAdapter("karpathy", ("dataset.json",), ("images", "imgs"),
                           "any Karpathy-style caption JSON (e.g. `clipstore synth` output)")
