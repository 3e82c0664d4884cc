"""Classification sets.

- imagefolder: one folder per class (class = folder name, classes sorted as torchvision's
  ImageFolder sorts them), with presets for the remote-sensing zero-shot sets: a preset knows the
  class set (a missing or extra class folder is reported), the image extension and where the class
  folders sit (UC Merced: `Images/`).
- rsicd_cls: RSICD images labeled by `txtclasses_rsicd/<Class>.txt` (one file name per line),
  with the split from `rsicd_karpathy_split.tsv` or the RSICD Karpathy JSON."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clipstore.ingest.adapters.base import (Adapter, IngestOptions, Source, find_first, image_folder, load_json,
                                            read_lines, record_with_image, require_path)
from clipstore.ingest.records import Reject
from clipstore.warehouse.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class Preset:
    name: str
    classes: tuple[str, ...]
    extension: str                     # what the distributed files use
    class_dirs: tuple[str, ...] = ()   # subfolders of the root that hold the class folders
    strip_prefix: int = 0              # leading characters of a folder name that are no part of the class name

    def display(self, folder: str) -> str:
        return folder[self.strip_prefix:] if self.strip_prefix else folder


PRESETS = {p.name: p for p in (
    Preset("ucm_cls", tuple(
        "agricultural airplane baseballdiamond beach buildings chaparral denseresidential forest freeway golfcourse "
        "harbor intersection mediumresidential mobilehomepark overpass parkinglot river runway sparseresidential "
        "storagetanks tenniscourt".split()), ".tif", class_dirs=("Images",)),
    Preset("whu_rs19", tuple(
        "Airport Beach Bridge Commercial Desert Farmland footballField Forest Industrial Meadow Mountain Park Parking "
        "Pond Port railwayStation Residential River Viaduct".split()), ".jpg"),
    Preset("rsscn7", tuple("aGrass bField cIndustry dRiverLake eForest fResident gParking".split()), ".jpg",
           strip_prefix=1),
    Preset("aid", tuple(
        "Airport BareLand BaseballField Beach Bridge Center Church Commercial DenseResidential Desert Farmland Forest "
        "Industrial Meadow MediumResidential Mountain Park Parking Playground Pond Port RailwayStation Resort River "
        "School SparseResidential Square Stadium StorageTanks Viaduct".split()), ".jpg"),
    Preset("resisc45", tuple(
        "airplane airport baseball_diamond basketball_court beach bridge chaparral church circular_farmland cloud "
        "commercial_area dense_residential desert forest freeway golf_course ground_track_field harbor "
        "industrial_area intersection island lake meadow medium_residential mobile_home_park mountain overpass "
        "palace parking_lot railway railway_station rectangular_farmland river roundabout runway sea_ice ship "
        "snowberg sparse_residential stadium storage_tank tennis_court terrace thermal_power_station "
        "wetland".split()), ".jpg"),
)}


def guess_preset(folders: list[str]) -> tuple[Preset | None, int]:
    """The preset whose class set overlaps the folder names most (at least half of it), and the overlap."""
    best, overlap = None, 0
    for preset in PRESETS.values():
        n = len(set(folders) & set(preset.classes))
        if n > overlap and n * 2 >= len(preset.classes):
            best, overlap = preset, n
    return best, overlap


class ImageFolderAdapter(Adapter):
    format = "imagefolder"
    summary = "one folder per class (presets: " + ", ".join(PRESETS) + ")"
    layout = ("ROOT/<class>/<image> (class = folder name, classes sorted; UC Merced: ROOT/Images/<class>/); "
              "--images DIR names the folder holding the class folders; --preset (or --name) "
              + "|".join(PRESETS) + " checks the class set")

    def open(self, path: Path, options: IngestOptions) -> Source:
        require_path(path, "image folder", self.layout)
        preset = PRESETS.get(options.preset or "")
        notes: list[str] = []
        if options.preset and preset is None and options.preset != self.format:
            notes.append(f"{options.preset!r} is no preset ({', '.join(PRESETS)}): the class set is not checked")
        root = options.images or class_root(path, preset)
        if not root.is_dir():
            raise InputError(f"{root} is not a folder", where=str(root), fix=f"expected layout: {self.layout}")
        linked = sorted(e.name for e in os.scandir(root) if e.is_dir() and e.is_symlink())
        subfolders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.is_symlink())
        hidden = [f for f in subfolders if f.startswith(".")]
        if hidden:
            notes.append(f"hidden folder(s) {', '.join(hidden)} in {root} are no classes: not read")
        folders = [f for f in subfolders if not f.startswith(".")]
        if not folders:
            raise InputError(f"no class folders in {root}", where=str(root), fix=f"expected layout: {self.layout}")
        if preset is None:
            guess, overlap = guess_preset(folders)
            if guess is not None:
                notes.append(f"the folders look like preset {guess.name} ({overlap} of {len(guess.classes)} classes): "
                             f"pass --preset {guess.name} to check the class set")
        classes = class_table(folders, preset, notes)
        return Source(records=self._records(root, folders, linked, preset, notes), files=[], image_root=root,
                      classes=classes, notes=notes)

    def _records(self, root: Path, folders: list[str], linked: list[str], preset: Preset | None, notes: list[str]):
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.is_file():
                yield Reject(entry.name, f"{entry.name} is not inside a class folder of {root}")
        not_followed = list(linked)
        for name in linked:
            yield _link_reject(root, name)
        foreign, empty = {}, []
        for folder in folders:
            count = 0
            files, links = _files_below(root / folder)
            for rel in links:
                link = f"{folder}/{rel}"
                yield _link_reject(root, link)
                not_followed.append(link)
            for rel in files:
                key = f"{folder}/{rel}"
                ext = os.path.splitext(rel)[1].lower()
                if ext not in IMAGE_EXTENSIONS:
                    yield Reject(key, f"not an image file (extension {ext or 'none'!r}): {key}")
                    continue
                if preset is not None and ext != preset.extension:
                    foreign[ext] = foreign.get(ext, 0) + 1
                count += 1
                yield record_with_image(root, key, key, label=folder, meta={"file": rel})
            if count == 0:
                empty.append(folder)
        if empty:
            notes.append(f"{len(empty)} class folder(s) hold no image: {', '.join(empty)}")
        if not_followed:
            notes.append(f"{len(not_followed)} directory link(s) not followed (a reject row each): "
                         + ", ".join(not_followed[:5]) + (" …" if len(not_followed) > 5 else ""))
        if foreign:
            found = ", ".join(f"{n} {ext}" for ext, n in sorted(foreign.items()))
            notes.append(f"preset {preset.name} expects {preset.extension} files; also found {found} (ingested)")


def class_root(path: Path, preset: Preset | None) -> Path:
    """Where the class folders sit: the preset's subfolder (UC Merced's Images/) or a lone
    Images/ folder when present, else PATH itself."""
    if preset is not None and preset.class_dirs:
        return find_first(path, preset.class_dirs) or path
    if path.is_dir():
        subfolders = [e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")]
        if len(subfolders) == 1 and subfolders[0] in ("Images", "images"):
            return path / subfolders[0]
    return path


def _files_below(folder: Path) -> tuple[list[str], list[str]]:
    """(every file below a class folder, nested folders too, as torchvision's ImageFolder walks
    them; the directory links met on the way), as sorted paths relative to the folder.

    Directory links are not followed: one pointing up (`loop -> ..`) repeats the tree without end,
    one pointing into another class files its images twice, once under the wrong class."""
    files, links = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        rel = os.path.relpath(dirpath, folder)
        prefix = "" if rel == "." else f"{rel}/"
        inside = prefix.__add__
        links.extend(inside(d) for d in dirnames if os.path.islink(os.path.join(dirpath, d)))
        files.extend(inside(name) for name in filenames)
    return sorted(files), sorted(links)


def _link_reject(root: Path, rel: str) -> Reject:
    try:
        target = os.readlink(root / rel)
    except OSError:
        target = "?"
    return Reject(rel, f"directory link {rel} -> {target} is not followed: links inside an image folder "
                       "loop or repeat images under another class (copy or move the folder instead)")


def class_table(folders: list[str], preset: Preset | None, notes: list[str]) -> list[tuple[str, str]]:
    """(folder name, display name) in index order. With a preset the index covers the preset's whole
    class set, so indices stay those of the published set when a class folder is missing."""
    if preset is None:
        return [(f, f) for f in folders]
    missing = [c for c in preset.classes if c not in folders]
    extra = [f for f in folders if f not in preset.classes]
    if missing:
        notes.append(f"warning: preset {preset.name}: {len(missing)} of {len(preset.classes)} class folder(s) "
                     f"missing: {', '.join(missing)} (kept in the class table with no images)")
    if extra:
        notes.append(f"preset {preset.name}: {len(extra)} class folder(s) not in the preset: {', '.join(extra)} "
                     "(ingested as extra classes)")
    return [(c, preset.display(c)) for c in sorted(set(preset.classes) | set(folders))]


# --------------------------------------------------------------------------- rsicd_cls

CLASS_DIR = "txtclasses_rsicd"
RSICD_JSONS = ("dataset_rsicd.json", "dataset_rsicd.reconstructed.json")
SPLIT_TSV = "rsicd_karpathy_split.tsv"


class RsicdClsAdapter(Adapter):
    format = "rsicd_cls"
    summary = "RSICD-CLS: RSICD images labeled by txtclasses_rsicd/<Class>.txt (evaluation uses split val)"
    layout = (f"ROOT/{CLASS_DIR}/<Class>.txt (one image file name per line; 31 files with playfields), images in "
              f"ROOT/RSICD_images/, split from ROOT/{SPLIT_TSV} or ROOT/{RSICD_JSONS[0]} (Karpathy JSON); "
              f"PATH may be the {CLASS_DIR} folder; --images DIR overrides the image folder")

    def open(self, path: Path, options: IngestOptions) -> Source:
        require_path(path, "RSICD root", self.layout)
        if path.is_dir() and path.name == CLASS_DIR:
            path = path.parent
        class_dir = path / CLASS_DIR
        class_files = sorted(class_dir.glob("*.txt")) if class_dir.is_dir() else []
        if not class_files:
            raise InputError(f"no class lists {CLASS_DIR}/<Class>.txt in {path}", where=str(class_dir),
                             fix=f"expected layout: {self.layout}")
        image_root, notes = image_folder(path, options, ("RSICD_images", "images"))
        split_file, split_of = read_rsicd_split(path)
        files = [*class_files, *([split_file] if split_file else [])]
        if split_file is None:
            notes.append(f"no {SPLIT_TSV} or {RSICD_JSONS[0]} in {path}: every split is empty "
                         "(RSICD-CLS evaluation needs the val split)")
        classes = [(f.stem, f.stem) for f in class_files]
        return Source(records=self._records(class_files, image_root, split_of, notes), files=files,
                      image_root=image_root, classes=classes, notes=notes)

    def _records(self, class_files: list[Path], image_root: Path, split_of: dict[str, str] | None,
                 notes: list[str]):
        first_seen: dict[str, str] = {}
        unsplit = 0
        for class_file in class_files:
            label = class_file.stem
            for n, line, err in read_lines(class_file):
                where = f"{CLASS_DIR}/{class_file.name}:{n}"
                if err:
                    yield Reject(where, err)
                    continue
                name = line.strip()
                if not name:
                    continue
                if name in first_seen:
                    yield Reject(f"{name}@{class_file.name}", f"{name} is listed in {first_seen[name]} and again in "
                                                              f"{where}: the first class is kept")
                    continue
                first_seen[name] = where
                split = split_of.get(name) if split_of is not None else None
                unsplit += split_of is not None and split is None
                yield record_with_image(image_root, name, name, split=split, label=label,
                                        meta={"class_file": class_file.name})
        if unsplit:
            notes.append(f"{unsplit} listed image(s) are not in the split file (split left empty)")


def read_rsicd_split(root: Path) -> tuple[Path | None, dict[str, str] | None]:
    """filename -> split from the split TSV (a few hundred KB) or, failing that, the Karpathy JSON."""
    tsv = root / SPLIT_TSV
    if tsv.is_file():
        return tsv, _read_split_tsv(tsv)
    json_path = find_first(root, RSICD_JSONS)
    if json_path is None:
        return None, None
    doc = load_json(json_path)
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list):
        raise InputError(f"{json_path.name} has no top-level 'images' list", where=str(json_path),
                         fix="use the RSICD Karpathy JSON (dataset_rsicd.json)")
    return json_path, {e["filename"]: e.get("split") for e in images
                       if isinstance(e, dict) and isinstance(e.get("filename"), str)}


def _read_split_tsv(tsv: Path) -> dict[str, str]:
    split_of = {}
    for n, line, err in read_lines(tsv):
        if err:
            raise InputError(err, where=str(tsv))
        cols = line.split("\t")
        if not line.strip() or (n == 1 and cols[:2] == ["filename", "split"]):
            continue
        if len(cols) < 2:
            raise InputError(f"line {n} of {tsv.name} has no TAB-separated split column", where=str(tsv),
                             fix="each line: <file name>\\t<train|val|test>")
        split_of[cols[0].strip()] = cols[1].strip()
    return split_of


IMAGEFOLDER = ImageFolderAdapter()
RSICD_CLS = RsicdClsAdapter()
