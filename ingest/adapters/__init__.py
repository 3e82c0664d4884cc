"""Source adapters by FORMAT name (docs/ingest.md lists them)."""

from clipstore.ingest.adapters.base import Adapter, IngestOptions, Source
from clipstore.ingest.adapters.fashion import FASHION200K, FASHION_PRODUCTS, FASHIONGEN, POLYVORE
from clipstore.ingest.adapters.generic import HF, JSONL
from clipstore.ingest.adapters.imagefolder import IMAGEFOLDER, PRESETS, RSICD_CLS
from clipstore.ingest.adapters.karpathy import KARPATHY, RSICD, SYDNEY_CAPTIONS, UCM_CAPTIONS
from clipstore.ingest.adapters.textlists import RSITMD, SYDNEY_TXT
from clipstore.warehouse.errors import InputError

ADAPTERS: dict[str, Adapter] = {a.format: a for a in (
    RSICD, UCM_CAPTIONS, SYDNEY_CAPTIONS, KARPATHY, SYDNEY_TXT, RSITMD, IMAGEFOLDER, RSICD_CLS,
    FASHION200K, FASHIONGEN, POLYVORE, FASHION_PRODUCTS, JSONL, HF)}


def get_adapter(fmt: str) -> Adapter:
    try:
        return ADAPTERS[fmt]
    except KeyError:
        raise InputError(f"unknown format {fmt!r}", fix=f"use one of: {', '.join(sorted(ADAPTERS))}") from None


__all__ = ["ADAPTERS", "PRESETS", "Adapter", "IngestOptions", "Source", "get_adapter"]
