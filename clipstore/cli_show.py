"""`clipstore show REF`: one artifact, as a readable summary or (`--json`) in full.

REF is an artifact id, a name, or KIND:NAME (`corpus:rsicd`) when a name is used by several kinds."""

from __future__ import annotations

import json
import re
import sys

WIDTH = 100  # a value longer than this is cut; `--json` shows everything


def parse_ref(ref: str) -> tuple[str | None, str]:
    """`corpus:rsicd` -> ("corpus", "rsicd"); an id or a bare name -> (None, ref)."""
    kind, sep, name = ref.partition(":")
    if sep and name and re.fullmatch(r"[a-z][a-z_]*", kind):
        return kind, name
    return None, ref


def details(store, artifact) -> dict:
    """Everything the catalog knows about one artifact (what `--json` prints)."""
    a = artifact
    tables: dict[str, int] = {}
    for _, table, _ in store.parts(a.artifact_id):
        tables[table] = tables.get(table, 0) + 1
    return {"artifact_id": a.artifact_id, "kind": a.kind, "name": a.name, "status": a.status,
            "path": str(a.path), "created_at": str(a.created_at), "updated_at": str(a.updated_at),
            "recipe": a.recipe, "recipe_digest": a.recipe_digest, "counts": a.counts, "stats": a.stats,
            "lineage": [{"input": i, "role": r} for i, r in store.lineage(a.artifact_id)],
            "tables": dict(sorted(tables.items()))}


def _short(value, width: int | None = WIDTH) -> str:
    """A value on one line: dicts and lists inline, long ones cut with a pointer to --json."""
    if isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:,}"
    elif isinstance(value, dict):
        text = ", ".join(f"{k} {_short(v)}" for k, v in value.items()) or "-"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_short(v) for v in value) or "-"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = "-" if value is None else str(value)
    return text if width is None or len(text) <= width else text[:width - 12] + " ... (--json)"


def render(info: dict) -> str:
    recipe = info["recipe"]
    lines = [f"{info['kind']} {info['name']}  ({info['status']})",
             f"  id:       {info['artifact_id']}",
             f"  path:     {info['path']}",
             f"  created:  {info['created_at'][:19]}   updated: {info['updated_at'][:19]}",
             f"  recipe:   stage {recipe.get('stage', '-')}, code {recipe.get('code_version', '-')}, "
             f"digest {info['recipe_digest'][:12]}"]
    for key, value in recipe.get("params", {}).items():
        lines.append(f"    {key}: {_short(value)}")
    lines.append("  counts:   " + _short(info["counts"], width=None))
    params = recipe.get("params", {})
    stats = {k: v for k, v in info["stats"].items()  # what the recipe or the counts already said
             if not (k == "counts" and v == info["counts"]) and not (k in params and v == params[k])}
    if stats:
        lines.append("  stats:")
        lines.extend(f"    {key}: {_short(value)}" for key, value in stats.items())
    lines.append("  lineage:  " + (", ".join(f"{x['input']} ({x['role']})" for x in info["lineage"]) or "none"))
    lines.append("  parts:    " + (", ".join(f"{t} {n}" for t, n in info["tables"].items()) or "none"))
    return "\n".join(lines) + "\n"


def cmd_show(args) -> None:
    from clipstore.warehouse.store import Store
    store = Store(args.store, create=False)
    kind, ref = parse_ref(args.ref)
    info = details(store, store.get(ref, kind=kind))
    sys.stdout.write(json.dumps(info, indent=1, default=str) + "\n" if args.json else render(info))


def add_parsers(sub) -> None:
    s = sub.add_parser("show", help="show one artifact: a summary, or everything with --json",
                       description="One artifact: kind, name, status, counts, key stats, recipe parameters, "
                                   "lineage and parts per table. " + __doc__.splitlines()[2])
    s.add_argument("ref", metavar="REF", help="artifact id, name, or KIND:NAME (e.g. corpus:rsicd)")
    s.add_argument("--json", action="store_true", help="print the full catalog record as JSON (default: a summary)")
    s.set_defaults(func=cmd_show)
