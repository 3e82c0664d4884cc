"""The gauntlet: what clipstore was made to withstand, tried again, as counts (docs/gauntlet.md).

  sql      every hostile statement of tests/test_sql_gate.py against a real store: refused with a
           message, and afterwards every committed part still matches its catalog sha256
  kills    SIGKILL an ingest after N committed parts, resume, and compare with an uninterrupted
           run: every part byte-identical (sha256), the same logical tables, nothing left in tmp/
  faults   tests/test_faults.py (full disk in the shard writer, Parquet writer and lock file; a
           read-only store; permission denied), each test one fault
  inputs   tests/test_ingest_bad_input.py, each test one bad input (corrupt, truncated, empty,
           bombs, malformed JSON, ...)

    python bench/gauntlet.py [--kills 3] [--skip sql,kills,faults,inputs] [--data DIR]

Exit status 0 when everything held. Needs the real data (../shared/data or $CLIPSTORE_SHARED_DATA);
the fault tests mount a tmpfs and a read-only bind mount when run as root (skipped otherwise)."""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))   # the hostile list and the corpus helpers live with the tests


def _data_dir(arg: str | None) -> Path:
    data = Path(arg or os.environ.get("CLIPSTORE_SHARED_DATA") or REPO.parent / "shared" / "data").resolve()
    if not data.is_dir():
        sys.exit(f"gauntlet: the real data folder is missing: {data} (pass --data or set CLIPSTORE_SHARED_DATA)")
    os.environ["CLIPSTORE_SHARED_DATA"] = str(data)
    return data


# ---- sql ----------------------------------------------------------------------------------------

def run_sql(data: Path, work: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipstore.ingest.pipeline import ingest
    from clipstore.warehouse import ClipstoreError
    from clipstore.warehouse.sql import Session
    from clipstore.warehouse.store import Store
    from conftest import karpathy_from_real_images
    from test_sql_gate import HOSTILE, READS, _format

    karpathy_from_real_images(data, work / "corpus", 6)
    store = Store(work / "store")
    ingest(store, "karpathy", work / "corpus", name="gate", shard_size=3, workers=1, progress=False)
    outside = work / "outside.parquet"
    pq.write_table(pa.table({"secret": ["outside the store"]}), outside)
    (work / "scratch").mkdir()
    with store.connect() as con:
        parts = con.execute("SELECT path, sha256 FROM parts ORDER BY path").fetchall()
    part = next(p for p, _ in parts if "/samples/" in p)
    names = {"part": str((store.root / part).absolute()), "catalog": str(store.catalog_path.absolute()),
             "store": str(store.root.absolute()), "outside": str(outside), "tmp": str(work / "scratch")}
    refused, ran, by_category = 0, [], {}
    with Session(store) as session:
        for category, template in HOSTILE:
            try:
                session.query(_format(template, names))
                ran.append(template)
            except ClipstoreError:
                refused += 1
                by_category[category] = by_category.get(category, 0) + 1
        reads_ok = 0
        for template in READS:
            try:
                reads_ok += session.query(_format(template, names)).num_rows > 0
            except ClipstoreError:
                pass
    intact = sum(hashlib.sha256((store.root / p).read_bytes()).hexdigest() == d for p, d in parts)
    stray = list((work / "scratch").iterdir())
    return {"tried": len(HOSTILE), "held": refused if intact == len(parts) and not stray else 0,
            "detail": f"{refused} of {len(HOSTILE)} refused ({', '.join(f'{k} {v}' for k, v in by_category.items())}); "
                      f"{intact} of {len(parts)} committed parts match their sha256 afterwards; "
                      f"{reads_ok} of {len(READS)} reads (SUMMARIZE, DESCRIBE, EXPLAIN, ...) still work",
            "failed": [f"ran: {t}" for t in ran] + [f"file written outside the store: {p}" for p in stray]}


# ---- kills --------------------------------------------------------------------------------------

def _digests(root: Path) -> list[tuple]:
    from clipstore.warehouse.store import Store
    with Store(root, create=False).connect() as con:
        return con.execute("SELECT table_name, part, rows, sha256 FROM parts ORDER BY ALL").fetchall()


def _logical(root: Path) -> dict:
    from clipstore.warehouse.sql import query
    from clipstore.warehouse.store import Store
    store = Store(root, create=False)
    return {t: query(store, f"SELECT * EXCLUDE (part) FROM {t} ORDER BY ALL").to_pylist()
            for t in ("samples", "images", "captions", "rejects")}


def _ingest_args(root: Path, corpus: Path) -> list[str]:
    return [sys.executable, "-m", "clipstore", "-q", "--store", str(root), "ingest", "karpathy", str(corpus),
            "--name", "k", "--shard-size", "4", "--workers", "1"]


def run_kills(data: Path, work: Path, trials: int) -> dict:
    from conftest import karpathy_from_real_images
    corpus = work / "corpus"
    karpathy_from_real_images(data, corpus, 40, splits=("train", "val"))
    (corpus / "images" / "7.tif").write_bytes(b"")   # a reject among the parts
    reference = work / "reference"
    subprocess.run(_ingest_args(reference, corpus), check=True, stdout=subprocess.DEVNULL)
    want_digests, want_tables = _digests(reference), _logical(reference)
    n_parts = len({p for _, p, _, _ in want_digests})
    held, failed, details = 0, [], []
    for trial in range(trials):
        after = 1 + trial * max(1, (n_parts - 2) // max(1, trials))   # kill after 1, then later parts
        root = work / f"killed{trial}"
        proc = subprocess.Popen(_ingest_args(root, corpus), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if len(list(root.glob("artifacts/*/samples/*.parquet"))) >= after:
                break
            time.sleep(0.005)
        if proc.poll() is not None:
            failed.append(f"trial {trial}: the ingest finished before the kill")
            continue
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        committed = len({p for _, p, _, _ in _digests(root)})
        resumed = subprocess.run(_ingest_args(root, corpus), capture_output=True, text=True)
        same = resumed.returncode == 0 and _digests(root) == want_digests and _logical(root) == want_tables
        clean = not any((root / "tmp").glob("*")) if (root / "tmp").exists() else True
        if same and clean:
            held += 1
        else:
            failed.append(f"trial {trial}: resumed rc={resumed.returncode}, identical={same}, tmp clean={clean}")
        details.append(f"{committed}/{n_parts}")
    return {"tried": trials, "held": held,
            "detail": f"killed with {', '.join(details)} parts committed; resumed byte-identical to an "
                      f"uninterrupted run ({n_parts} parts, {len(want_digests)} files)", "failed": failed}


# ---- tests as cases -----------------------------------------------------------------------------

def run_tests(path: str, work: Path) -> dict:
    report = work / "report.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", path, "-q", "-p", "no:cacheprovider",
                           f"--junitxml={report}"], cwd=REPO, capture_output=True, text=True)
    cases = ET.parse(report).getroot().iter("testcase") if report.exists() else []
    passed, failed, skipped = 0, [], 0
    for case in cases:
        outcome = {child.tag for child in case}
        name = case.get("name")
        if outcome & {"failure", "error"}:
            failed.append(name)
        elif "skipped" in outcome:
            skipped += 1
        else:
            passed += 1
    if proc.returncode not in (0, 1) and not failed:
        failed.append(f"pytest exited {proc.returncode}: {proc.stdout[-500:]}")
    return {"tried": passed + len(failed), "held": passed,
            "detail": f"{path}" + (f"; {skipped} skipped (needs root to mount)" if skipped else ""),
            "failed": failed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=3, help="SIGKILL-and-resume trials (default %(default)s)")
    ap.add_argument("--skip", default="", help="comma-separated: sql, kills, faults, inputs")
    ap.add_argument("--data", help="the real data folder (default ../shared/data or $CLIPSTORE_SHARED_DATA)")
    args = ap.parse_args()
    data = _data_dir(args.data)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    sections = [("sql", "hostile SQL statements", lambda w: run_sql(data, w)),
                ("kills", "SIGKILL-and-resume ingest trials", lambda w: run_kills(data, w, args.kills)),
                ("faults", "fault injections", lambda w: run_tests("tests/test_faults.py", w)),
                ("inputs", "bad-input cases", lambda w: run_tests("tests/test_ingest_bad_input.py", w))]
    lines, all_held, started = ["| tried | held | what | detail |", "|---|---|---|---|"], True, time.monotonic()
    for key, title, run in sections:
        if key in skip:
            continue
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"gauntlet-{key}-") as tmp:
            result = run(Path(tmp))
        ok = result["held"] == result["tried"] and not result["failed"]
        all_held &= ok
        lines.append(f"| {result['tried']} | {result['held']} | {title} | {result['detail']} "
                     f"({time.monotonic() - t0:.0f}s) |")
        for f in result["failed"]:
            lines.append(f"|  |  | FAILED | {f} |")
    lines.append(f"\n{'everything held' if all_held else 'SOMETHING BROKE'} in {time.monotonic() - started:.0f}s")
    print("\n".join(lines))
    return 0 if all_held else 1


if __name__ == "__main__":
    sys.exit(main())
