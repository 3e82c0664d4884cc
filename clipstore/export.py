"""`clipstore export openclip`: webdataset shards holding exactly one split role (or one corpus),
ready for open_clip's trainer (`--dataset-type webdataset --train-data PATTERN
--train-num-samples N`).

Members are copied byte for byte from the corpus shards (header, data and padding blocks): every
exported sample holds exactly the members its corpus shard holds (`__key__` = sample id, the
image under its stored extension, `txt` = first caption, `cls` when labelled, `json`), nothing is
decoded or re-encoded, and the same store gives the same bytes. Shards are `000000.tar …` with
`sizes.json` (open_clip reads sample counts from it) and `export.json` (what was exported, from
which artifact versions). The folder appears complete or not at all: it is written beside the
target and renamed into place (a killed export's temp folder is removed by the next one)."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clipstore.warehouse import fs
from clipstore.warehouse.errors import ClipstoreError, InputError
from clipstore.warehouse.hashing import digest
from clipstore.warehouse.shards import BlockWriter, sample_blocks
from clipstore.warehouse.store import Store

if TYPE_CHECKING:   # clipstore.data imports torch; the CLI reads this module's defaults at start-up
    from clipstore.data import Selection

DEFAULT_SHARD_SIZE = 1000
FORMAT = "openclip-webdataset-1"


@dataclass(frozen=True)
class Export:
    path: Path
    label: str
    samples: int
    shards: list[Path]
    bytes: int
    skipped: int            # samples of a corpus without a stored image
    up_to_date: bool        # the folder already held this exact export

    @property
    def train_data(self) -> str:
        """open_clip's --train-data: brace notation over the shard files."""
        names = [p.stem for p in self.shards]
        if len(names) == 1:
            return str(self.path / f"{names[0]}.tar")
        return str(self.path / f"{{{names[0]}..{names[-1]}}}.tar")


def export_openclip(store: Store | str | Path, out: str | Path, *, split: str | None = None,
                    role: str | None = None, corpus: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
                    overwrite: bool = False) -> Export:
    """Write the samples of `split`/`role` or of `corpus` as webdataset shards in `out`."""
    if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
        raise InputError(f"--shard-size {shard_size!r} must be a positive number of samples",
                         fix=f"e.g. --shard-size {DEFAULT_SHARD_SIZE}")
    out = Path(out).absolute()
    from clipstore.data import select
    selection = select(store, split=split, role=role, corpus=corpus)
    if not selection.samples:
        raise InputError(f"{selection.label} has no sample with a stored image to export",
                         fix="ingest the corpus's images (`clipstore doctor` says what is missing)")
    recipe = {"format": FORMAT, "request": selection.request, "shard_size": shard_size,
              "inputs": {k: a.artifact_id for k, a in sorted(selection.inputs.items())},
              "input_versions": selection.versions}
    recipe_digest = digest(recipe)
    existing = _existing_digest(out)
    if existing is not None and existing == recipe_digest:
        return _describe(out, selection, up_to_date=True)
    if out.exists() and (existing is None or not overwrite) and (not out.is_dir() or any(out.iterdir())):
        what = "an earlier export of other data" if existing else "files that are not an export"
        raise InputError(f"{out} already exists and holds {what}",
                         fix="pass --overwrite to replace it, or choose another folder" if existing
                         else "choose an empty or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    fs.remove(tmp)
    tmp.mkdir()
    try:
        sizes = _write_shards(selection, tmp, shard_size)
        fs.atomic_write_bytes(tmp / "sizes.json", json.dumps(sizes, indent=1, sort_keys=True).encode())
        manifest = {**recipe, "digest": recipe_digest, "label": selection.label,
                    "samples": sum(sizes.values()), "shards": sorted(sizes), "skipped": selection.skipped}
        fs.atomic_write_bytes(tmp / "export.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
        _swap_into_place(tmp, out)
    except BaseException:
        fs.remove(tmp)
        raise
    return _describe(out, selection, up_to_date=False)


def _write_shards(selection: Selection, folder: Path, shard_size: int) -> dict[str, int]:
    sizes: dict[str, int] = {}
    handles: dict[Path, io.BufferedReader] = {}
    writer: BlockWriter | None = None
    try:
        for i, ref in enumerate(selection.samples):
            if i % shard_size == 0:
                if writer is not None:
                    writer.close()
                    sizes[writer.path.name] = writer.count
                writer = BlockWriter(folder / f"{i // shard_size:06d}.tar")
            tar = handles.get(ref.image.shard)
            if tar is None:
                tar = handles[ref.image.shard] = io.open(ref.image.shard, "rb")
            try:
                blocks = sample_blocks(tar, ref.image, ref.ext)
            except (OSError, ValueError) as exc:
                raise ClipstoreError(f"cannot read sample {ref.sample_id} from its corpus shard: {exc}",
                                     where=str(ref.image.shard), fix="re-ingest the corpus") from None
            writer.add(blocks)
        writer.close()
        sizes[writer.path.name] = writer.count
    finally:
        for tar in handles.values():
            tar.close()
    return sizes


def _existing_digest(out: Path) -> str | None:
    try:
        return json.loads((out / "export.json").read_text(encoding="utf-8")).get("digest")
    except (OSError, ValueError, AttributeError):
        return None


def _sweep_leftovers(out: Path) -> None:
    """Remove the temp and old folders of exports to `out` that were killed (their process is gone)."""
    import psutil
    for leftover in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = leftover.name.rpartition("-")
        if kind in (f".{out.name}.tmp", f".{out.name}.old") and pid.isdigit() and not psutil.pid_exists(int(pid)):
            fs.remove(leftover)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to `out`; an old export there is moved aside first and removed
    after, so `out` always holds one complete export."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    fs.publish(tmp, out)
    fs.remove(old)


def _describe(out: Path, selection: Selection, up_to_date: bool) -> Export:
    sizes = json.loads((out / "sizes.json").read_text(encoding="utf-8"))
    shards = [out / name for name in sorted(sizes)]
    return Export(out, selection.label, sum(sizes.values()), shards, sum(p.stat().st_size for p in shards),
                  selection.skipped, up_to_date)
