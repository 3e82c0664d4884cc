"""Pseudo-labels: materialised, versioned tables of the labels semi-supervised CLIP methods compute
on the fly (nearest labeled image, caption-level OT, keyword candidate sets, class votes,
concepts, propagation), with confidence and lineage, audited against the truth the corpora hold.

One module per producer; the shared core is common.py (inputs, produce wrapper, checks),
tables.py (schemas with the lineage columns) and audit.py. See docs/pseudolabels.md."""

from __future__ import annotations

import importlib
import pkgutil

CORE_MODULES = ("common", "tables", "audit")


def producer_modules() -> list:
    """The producer modules of this package (those defining `add_parser(sub, cli)`), in
    `CLI_ORDER` then name order. Importing one registers its audits too."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name in CORE_MODULES:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "add_parser"):
            found.append(module)
    return sorted(found, key=lambda m: (getattr(m, "CLI_ORDER", 100), m.__name__))
