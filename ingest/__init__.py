"""Source adapters -> webdataset shards + Parquet tables + split manifests."""
