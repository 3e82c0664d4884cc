"""Source adapters by FORMAT name (DESIGN §7)."""

from clipstore.ingest.adapters.base import Adapter, IngestOptions, Source
from clipstore.ingest.adapters.karpathy import KARPATHY, RSICD, SYDNEY_CAPTIONS, UCM_CAPTIONS
from clipstore.warehouse.errors import InputError

ADAPTERS: dict[str, Adapter] = {a.format: a for a in (RSICD, UCM_CAPTIONS, SYDNEY_CAPTIONS, KARPATHY)}


def get_adapter(fmt: str) -> Adapter:
    try:
        return ADAPTERS[fmt]
    except KeyError:
        raise InputError(f"unknown format {fmt!r}", fix=f"use one of: {', '.join(sorted(ADAPTERS))}") from None


__all__ = ["ADAPTERS", "Adapter", "IngestOptions", "Source", "get_adapter"]
