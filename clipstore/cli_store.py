"""`clipstore versions NAME [--use ID]`: every version a name has had, and going back to one."""

from __future__ import annotations

import sys


def _recipe_differences(recipe: dict, reference: dict) -> str:
    """What a version's recipe changes against the current one's: `key=value` per differing
    parameter (inputs and stage version too), or '' for the reference itself."""
    if recipe == reference:
        return ""
    mine, theirs = recipe.get("params", {}), reference.get("params", {})
    diffs = [f"{k}={mine.get(k)!r}" for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
    if recipe.get("stage_version") != reference.get("stage_version"):
        diffs.append(f"stage_version={recipe.get('stage_version')}")
    if recipe.get("inputs") != reference.get("inputs"):
        diffs.append("inputs differ")
    return ", ".join(diffs) or "same parameters"


def cmd_versions(args) -> None:
    import pyarrow as pa

    from clipstore.warehouse.sql import format_table
    from clipstore.warehouse.store import Store
    store = Store(args.store, create=False)
    kind, name = args.name.split(":", 1) if ":" in args.name else (None, args.name)
    if args.use:
        with store.writing(wait=args.wait):
            target = store.get(args.use)
            if target.name != name or (kind and target.kind != kind):
                from clipstore.warehouse.errors import InputError
                raise InputError(f"{args.use} is a version of {target.kind}:{target.name}, not of {args.name}",
                                 fix=f"pick an id from `clipstore versions {args.name}`")
            art = store.use(target.artifact_id)
        print(f"{art.kind} {art.name}: now at {art.artifact_id} "
              f"({', '.join(f'{k}={v}' for k, v in art.counts.items() if not isinstance(v, dict))})")
        return
    history = store.history(name, kind)
    current = next((v.artifact.recipe for v in history if v.current), history[-1].artifact.recipe)
    rows = [{"current": "*" if v.current else "", "artifact_id": v.artifact.artifact_id, "state": v.state,
             "created": v.artifact.created_at.strftime("%Y-%m-%d %H:%M:%S"),
             "counts": ", ".join(f"{k}={n}" for k, n in v.artifact.counts.items() if not isinstance(n, dict))[:60]
             + (f" (+{v.pending_parts} pending parts)" if v.pending_parts else ""),
             "differs_from_current": _recipe_differences(v.artifact.recipe, current)[:80]}
            for v in history]
    sys.stdout.write(format_table(pa.Table.from_pylist(rows)))
    if not any(v.current for v in history):
        print(f"(no version of {args.name} is current: none has completed; re-run its command to resume)")


def add_parsers(sub) -> None:
    s = sub.add_parser("versions", help="list every version of a name, or make one current again",
                       description="Every version a name has had: id, state (complete, incomplete = a run "
                                   "stopped before finishing, building), counts, how its recipe differs "
                                   "from the current one, and which is current. --use ID moves the name "
                                   "back (or forward) to a completed version.")
    s.add_argument("name", metavar="NAME", help="artifact name, or KIND:NAME when several kinds share it")
    s.add_argument("--use", metavar="ID", help="make this completed version current (default: just list)")
    s.set_defaults(func=cmd_versions)
