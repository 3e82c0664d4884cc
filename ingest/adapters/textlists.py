"""Plain-text caption lists.

- sydney_txt: upstream Sydney_captions `descriptions_SIDNEY.txt` (`<num> <caption>` per line, CRLF,
  five lines per image) with `filenames_{train,val,test}.txt` split lists; image `<num>.tif`.
- rsitmd: AMFMN "precomp" lists (RSITMD, also RSICD/UCM/Sydney precomp): `<split>_caps.txt` (one
  caption per line) beside `<split>_filename.txt`, which names either one file per caption or one
  file per image followed by that image's captions (RSITMD train: 4,291 names for 21,455 lines)."""

from __future__ import annotations

import re
from pathlib import Path

from clipstore.ingest.adapters.base import (Adapter, IngestOptions, Source, find_first, image_folder, locate_annotation,
                                            load_image_map, mapped_record, read_lines, require_path)
from clipstore.ingest.records import Reject
from clipstore.warehouse.errors import InputError

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- sydney_txt

DESCRIPTION_FILES = ("descriptions_SIDNEY.txt", "descriptions_SYDNEY.txt")
DESCRIPTION_LINE = re.compile(r"^\s*(\d+)\s+(\S.*?)\s*$")


class SydneyTxtAdapter(Adapter):
    format = "sydney_txt"
    summary = "Sydney_captions upstream text files (descriptions_SIDNEY.txt + split lists)"
    layout = ("ROOT/descriptions_SIDNEY.txt (`<num> <caption>` per line, 5 lines per image), "
              "ROOT/filenames_{train,val,test}.txt (one `<num>.tif` per line, optional) and "
              "ROOT/images/<num>.tif (or imgs/); PATH may be the descriptions file; --images DIR overrides "
              "the image folder")

    def open(self, path: Path, options: IngestOptions) -> Source:
        descriptions, root = locate_annotation(path, DESCRIPTION_FILES, "sydney_txt corpus", self.layout)
        image_root, notes = image_folder(root, options, ("images", "imgs"))
        split_of, conflicts, split_files = read_split_lists(root)
        if not split_files:
            notes.append(f"no filenames_{{train,val,test}}.txt split lists in {root}: every split is empty")
        records = self._records(descriptions, image_root, load_image_map(options), split_of, conflicts,
                                bool(split_files), notes)
        return Source(records=records, files=[descriptions, *split_files], image_root=image_root, notes=notes)

    def _records(self, descriptions: Path, image_root: Path, mapping, split_of: dict[str, str],
                 conflicts: dict[str, list[str]], have_splits: bool, notes: list[str]):
        captions: dict[str, list[str]] = {}
        first_line: dict[str, int] = {}
        for n, line, err in read_lines(descriptions):
            where = f"{descriptions.name}:{n}"
            if err:
                yield Reject(where, err)
                continue
            if not line.strip():
                continue  # blank line: no entry
            m = DESCRIPTION_LINE.match(line)
            if m is None:
                yield Reject(where, f"line {n} of {descriptions.name} is not `<image number> <caption>`: {line[:60]!r}")
                continue
            name = f"{m.group(1)}.tif"
            captions.setdefault(name, []).append(m.group(2))
            first_line.setdefault(name, n)

        unlisted, caption_less = [], []
        names = list(captions) + [name for name in split_of if name not in captions]
        for name in names:
            if name in conflicts:
                yield Reject(name, f"{name} is listed in {' and '.join(conflicts[name])}: its split is ambiguous")
                continue
            if name not in captions:
                caption_less.append(name)
            elif have_splits and name not in split_of:
                unlisted.append(name)
            meta = {"line": first_line.get(name)}
            yield mapped_record(image_root, name, name, mapping, captions=captions.get(name, []),
                                split=split_of.get(name), meta=meta)
        if unlisted:
            notes.append(f"{len(unlisted)} image(s) with captions are in no split list (split left empty), "
                         f"e.g. {', '.join(unlisted[:5])}")
        if caption_less:
            notes.append(f"{len(caption_less)} image(s) of the split lists have no line in {descriptions.name} "
                         f"(ingested without captions), e.g. {', '.join(caption_less[:5])}")


def read_split_lists(root: Path) -> tuple[dict[str, str], dict[str, list[str]], list[Path]]:
    """filenames_<split>.txt in root or root/filenames: name -> split, names listed in several
    lists (-> the list files), and the files read."""
    split_of: dict[str, str] = {}
    listed_in: dict[str, list[str]] = {}
    files = []
    for split in SPLITS:
        path = find_first(root, (f"filenames_{split}.txt", f"filenames/filenames_{split}.txt"))
        if path is None:
            continue
        files.append(path)
        for _n, line, err in read_lines(path):
            if err:
                raise InputError(err, where=str(path), fix="split lists must be UTF-8 text, one file name per line")
            name = line.strip()
            if not name:
                continue
            listed_in.setdefault(name, [])
            if path.name not in listed_in[name]:
                listed_in[name].append(path.name)
            split_of.setdefault(name, split)
    conflicts = {name: lists for name, lists in listed_in.items() if len(lists) > 1}
    return split_of, conflicts, files


# --------------------------------------------------------------------------- rsitmd / precomp lists

class CaptionListAdapter(Adapter):
    format = "rsitmd"
    summary = "RSITMD (or any AMFMN precomp set): <split>_caps.txt + <split>_filename.txt"
    layout = ("ROOT/<split>_caps.txt (one caption per line) and ROOT/<split>_filename.txt (one file name per "
              "caption, or one per image when each image has the same number of consecutive captions) for "
              "split in train/val/test, images in ROOT/images/<file name>; PATH may be one of the list files; "
              "--images DIR overrides the image folder")

    def open(self, path: Path, options: IngestOptions) -> Source:
        require_path(path, "rsitmd corpus", self.layout)
        root = path if path.is_dir() else path.parent
        pairs = []
        for caps in sorted(root.glob("*_caps.txt")):
            split = caps.name[: -len("_caps.txt")]
            names = find_first(root, (f"{split}_filename.txt", f"{split}_filenames.txt"))
            if names is None:
                raise InputError(f"{caps.name} has no matching {split}_filename.txt", where=str(root),
                                 fix=f"add the file-name list of the {split} split; layout: {self.layout}")
            pairs.append((split, caps, names))
        if not pairs:
            raise InputError(f"no <split>_caps.txt caption lists in {root}", where=str(root),
                             fix=f"expected layout: {self.layout}")
        image_root, notes = image_folder(root, options, ("images", "imgs"))
        groups = [(split, caps, names, align_lists(caps, names)) for split, caps, names in pairs]
        return Source(records=self._records(groups, image_root, load_image_map(options), notes),
                      files=[f for _, caps, names in pairs for f in (caps, names)], image_root=image_root,
                      notes=notes)

    def _records(self, groups, image_root: Path, mapping, notes: list[str]):
        dropped = 0
        for split, caps, _names, entries in groups:
            for entry in entries:
                if isinstance(entry, Reject):
                    yield entry
                    continue
                name, lines = entry
                captions = [text for _, text, err in lines if err is None and text.strip()]
                meta = {"caption_file": caps.name, "first_line": lines[0][0]}
                unusable = {f"{caps.name}:{n}": err or "blank" for n, text, err in lines
                            if err is not None or not text.strip()}
                if unusable:
                    meta["unusable_caption_lines"] = unusable
                    dropped += len(unusable)
                yield mapped_record(image_root, name, name, mapping, captions=[c.strip() for c in captions],
                                    split=split, meta=meta)
        if dropped:
            notes.append(f"{dropped} blank or undecodable caption line(s) were left out of their image's captions "
                         "(see meta.unusable_caption_lines)")


def _content_lines(path: Path) -> list[tuple[int, str | None, str | None]]:
    lines = list(read_lines(path))
    while lines and lines[-1][2] is None and not lines[-1][1].strip():
        lines.pop()  # trailing blank lines are no entries
    return lines


def align_lists(caps: Path, names: Path) -> list:
    """[(file name, [(line, caption, error)])] in list order, or Reject for unreadable file names.

    The two files align either line by line (a name per caption) or a name per k consecutive captions."""
    cap_lines, name_lines = _content_lines(caps), _content_lines(names)
    if not name_lines:
        raise InputError(f"{names.name} is empty", where=str(names), fix="list one file name per line")
    if len(cap_lines) == len(name_lines):
        per_name = 1
    elif len(cap_lines) % len(name_lines) == 0:
        per_name = len(cap_lines) // len(name_lines)
    else:
        raise InputError(
            f"{caps.name} has {len(cap_lines)} lines but {names.name} has {len(name_lines)}: neither one file name "
            "per caption nor the same number of captions per file name", where=str(caps.parent),
            fix="check that the two lists belong together and are complete")
    groups: dict[str, list] = {}
    out: list = []
    for i, (n, name, err) in enumerate(name_lines):
        lines = cap_lines[i * per_name:(i + 1) * per_name]
        name = name.strip() if name is not None else None
        if err or not name:
            why = err or f"line {n} of {names.name} is blank"
            out.append(Reject(f"{names.name}:{n}", f"{why}; its {len(lines)} caption line(s) are not ingested"))
            continue
        if name not in groups:
            groups[name] = []
            out.append((name, groups[name]))
        groups[name].extend(lines)
    return out


SYDNEY_TXT = SydneyTxtAdapter()
RSITMD = CaptionListAdapter()
