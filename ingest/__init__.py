"""Source adapters -> webdataset shards + Parquet tables + split manifests."""


def run(store, fmt, path, **options):
    """Python API mirror of `clipstore ingest FORMAT PATH`: returns the corpus artifact."""
    from clipstore.ingest.pipeline import ingest
    return ingest(store, fmt, path, **options)
