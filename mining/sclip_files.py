"""S-CLIP's keyword files, both ways.

The format (alinlab/s-clip `keywords/RS/yake-50.txt`, read by `read_keywords`: one
`line.strip()` per line): one keyword per line in priority order, UTF-8, no blank lines (a blank
line would become the keyword "" and match every caption), and, as the published files are, no
newline after the last line. `yake-50/100/200/300.txt` are prefixes of one ranking.

- export: a vocabulary artifact -> `<prefix>-<size>.txt` per size (or one `<prefix>.txt`).
  A size larger than the vocabulary is an error rather than a short file: a file named
  yake-300.txt with 250 lines would misstate what it is.
- import: such files -> a vocabulary artifact (source "import", rank = line order), optionally
  matched against captions. Several files must be prefixes of one ranking; the longest is kept."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc

from clipstore.mining.keywords import write_keyword_vocab
from clipstore.mining.matching import match_tokens, normalise_keyword
from clipstore.mining.scope import resolve_match_scope
from clipstore.mining.tables import KEYWORD_VOCAB_TABLES
from clipstore.mining.vocab import begin_vocab
from clipstore.warehouse import fs
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.hashing import digest, file_sha256
from clipstore.warehouse.parquet import read_parquet
from clipstore.warehouse.store import Artifact, Store

DEFAULT_SIZES = (50, 100, 200, 300)
PREFIX_BY_SOURCE = {"yake": "yake", "classname": "class-name", "import": "keywords"}


# ---- export ---------------------------------------------------------------------------------
def vocabulary_keywords(store: Store, vocab_ref: str) -> tuple[Artifact, list[str], str]:
    """(artifact, keywords in rank order, source) of a keyword vocabulary, by id or name."""
    artifact = store.get(vocab_ref, kind="vocab")
    if artifact.kind != "vocab" or "keywords" not in artifact.tables:
        raise InputError(f"{artifact.artifact_id} is a {artifact.kind} artifact without a keyword list",
                         fix="name a keyword or class-name vocabulary (`clipstore ls --kind vocab`)")
    if artifact.status != "complete":
        raise InputError(f"vocabulary {artifact.artifact_id} is not complete ({artifact.status})",
                         fix="re-run the `clipstore mine` command that builds it")
    table = read_parquet(store.table_paths(artifact, "keywords"), columns=["keyword", "rank", "source"])
    table = table.sort_by("rank")
    sources = pc.unique(table.column("source")).to_pylist()
    return artifact, table.column("keyword").to_pylist(), sources[0] if len(sources) == 1 else "keywords"


def export_sclip(store: Store, vocab_ref: str, out_dir: str | Path, *,
                 sizes: Sequence[int] | None = DEFAULT_SIZES, prefix: str | None = None) -> list[Path]:
    """Write `<prefix>-<size>.txt` for each size (each a prefix of the ranking), or one
    `<prefix>.txt` with every entry when `sizes` is None or empty. The prefix defaults to
    "yake" / "class-name" / "keywords" by the vocabulary's source. Returns the paths written."""
    artifact, keywords, source = vocabulary_keywords(store, vocab_ref)
    prefix = prefix or PREFIX_BY_SOURCE.get(source, "keywords")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", prefix):
        raise InputError(f"file prefix {prefix!r} is not a plain file-name stem", fix="e.g. --prefix yake")
    wanted = sorted(set(sizes or ()))
    bad = [s for s in wanted if not isinstance(s, int) or s < 1]
    if bad:
        raise InputError(f"list sizes must be positive integers, got {bad}", fix="e.g. --sizes 50,100,200,300")
    too_big = [s for s in wanted if s > len(keywords)]
    if too_big:
        raise InputError(f"vocabulary {artifact.artifact_id} has {len(keywords)} entries: cannot write a "
                         f"{prefix}-{too_big[0]}.txt list",
                         fix=f"ask for sizes up to {len(keywords)}, or re-mine with --top {max(too_big)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [(out / f"{prefix}-{s}.txt", keywords[:s]) for s in wanted] or [(out / f"{prefix}.txt", keywords)]
    for path, entries in files:
        fs.atomic_write_bytes(path, "\n".join(entries).encode("utf-8"))
    return [p for p, _ in files]


# ---- reading --------------------------------------------------------------------------------
@dataclass
class KeywordFile:
    path: Path
    keywords: list[str]
    sha256: str
    blank_lines: int = 0
    duplicates: list[tuple[int, str]] = field(default_factory=list)   # (line, keyword) dropped
    normalised_lines: int = 0                                          # lines changed by case/space folding

    @property
    def stated_size(self) -> int | None:
        m = re.search(r"-(\d+)$", self.path.stem)
        return int(m.group(1)) if m else None

    def summary(self) -> dict:
        return {"file": self.path.name, "sha256": self.sha256, "entries": len(self.keywords),
                "blank_lines": self.blank_lines, "duplicates": [k for _, k in self.duplicates],
                "normalised_lines": self.normalised_lines}


@dataclass
class Ranking:
    keywords: list[str]
    files: list[KeywordFile]
    notes: list[str]


def read_keyword_file(path: Path) -> KeywordFile:
    if not path.is_file():
        raise NotFoundError(f"no keyword file {path}", fix="pass existing yake-N.txt files or their folder")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")    # a BOM is tolerated
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(f"{path.name} is not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} "
                         f"(offset {exc.start})", where=str(path),
                         fix="re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`") from None
    kf = KeywordFile(path, [], file_sha256(path))
    seen: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        keyword = normalise_keyword(line)
        if not keyword:
            kf.blank_lines += 1
            continue
        if not match_tokens(keyword):
            raise InputError(f"line {n} of {path.name} ({line.strip()!r}) has no letter or digit: it can never "
                             "match a caption", where=str(path), fix="delete that line")
        if keyword in seen:
            kf.duplicates.append((n, keyword))
            continue
        kf.normalised_lines += keyword != line.strip()
        seen[keyword] = n
        kf.keywords.append(keyword)
    if not kf.keywords:
        raise InputError(f"{path.name} holds no keyword", where=str(path),
                         fix="one keyword per line (S-CLIP's yake-N.txt format)")
    return kf


def keyword_files(files_or_dir: str | Path | Sequence[str | Path], prefix: str = "yake") -> list[Path]:
    """The files to read: those given, or a folder's `<prefix>-<N>.txt` files."""
    if isinstance(files_or_dir, (str, Path)):
        files_or_dir = [files_or_dir]
    paths = [Path(p) for p in files_or_dir]
    if not paths:
        raise InputError("no keyword file given", fix="pass yake-N.txt files or the folder holding them")
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        pattern = re.compile(rf"{re.escape(prefix)}-\d+\.txt")
        found = sorted(p for p in folder.iterdir() if p.is_file() and pattern.fullmatch(p.name))
        if not found:
            others = sorted(p.name for p in folder.glob("*.txt"))
            raise InputError(f"no {prefix}-N.txt files in {folder}" + (f" (it has {', '.join(others)})" if others
                                                                        else ""), where=str(folder),
                             fix="pass the files themselves, or --prefix to name another list family")
        return found
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise NotFoundError(f"no such keyword file: {missing[0]}", fix="check the path")
    return paths


def read_ranking(files_or_dir: str | Path | Sequence[str | Path], prefix: str = "yake") -> Ranking:
    """One ranking from one file, or from several files that are prefixes of one ranking."""
    files = [read_keyword_file(p) for p in keyword_files(files_or_dir, prefix)]
    files.sort(key=lambda f: (len(f.keywords), f.path.name))
    longest = files[-1]
    for f in files[:-1]:
        if longest.keywords[:len(f.keywords)] != f.keywords:
            i = next(i for i, (a, b) in enumerate(zip(f.keywords, longest.keywords)) if a != b)
            raise InputError(f"{f.path.name} is not a prefix of {longest.path.name}: entry {i + 1} is "
                             f"{f.keywords[i]!r} there but {longest.keywords[i]!r} in {longest.path.name}",
                             where=str(f.path.parent),
                             fix="pass lists cut from one ranking (yake-50 ... yake-300), or import each "
                                 "separately under its own --name")
    notes = []
    for f in files:
        if f.stated_size is not None and f.stated_size != len(f.keywords):
            notes.append(f"{f.path.name} holds {len(f.keywords)} keywords, not {f.stated_size}")
        if f.duplicates:
            shown = ", ".join(f"line {n}: {k!r}" for n, k in f.duplicates[:5])
            notes.append(f"{f.path.name}: {len(f.duplicates)} repeated keyword(s) dropped ({shown})")
        if f.blank_lines:
            notes.append(f"{f.path.name}: {f.blank_lines} blank line(s) skipped")
        if f.normalised_lines:
            notes.append(f"{f.path.name}: {f.normalised_lines} keyword(s) case- or space-folded")
    return Ranking(longest.keywords, files, notes)


# ---- import ---------------------------------------------------------------------------------
def import_keywords(store: Store, files_or_dir: str | Path | Sequence[str | Path], *, name: str,
                    match_split: str | None = None, match_role: str | None = None,
                    match_corpora: list[str] | None = None, prefix: str = "yake", wait: bool = False) -> Artifact:
    """Import S-CLIP keyword files as a vocabulary named `name` (rank = line order of the longest
    list); with a match scope, also build its caption x keyword matrix. The recipe holds the
    ranking's digest, not file paths: the same ranking imported again is the same artifact."""
    if not name or not name.strip():
        raise InputError("an imported vocabulary needs a name", fix="pass --name NAME")
    ranking = read_ranking(files_or_dir, prefix)
    with store.writing(wait=wait):
        match_scope = resolve_match_scope(store, split=match_split, role=match_role, corpora=match_corpora)
        params = {"method": "import", "entries": len(ranking.keywords), "ranking_sha256": digest(ranking.keywords),
                  "match": match_scope.params() if match_scope else None}
        builder = begin_vocab(store, "keywords", name, params, None, KEYWORD_VOCAB_TABLES,
                              extra_inputs=match_scope.input_ids if match_scope else [])
        if isinstance(builder, Artifact):   # this recipe completed before: nothing to do
            return builder
        with builder.failing_on_error():
            stats = {"files": [f.summary() for f in ranking.files], "notes": ranking.notes}
            return write_keyword_vocab(store, builder, kind="keywords", scope_label="import", method="import",
                                       keywords=ranking.keywords,
                                       scores=[None] * len(ranking.keywords), source="import",
                                       match_scope=match_scope, stats=stats)
