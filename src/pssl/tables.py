"""Parquet tables with the pipeline's metadata (index, shards, label tables): every stage reads and writes
them through here. The metadata (root, classes, shard, ...) travels in the parquet schema."""

from __future__ import annotations

import json
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pssl.io import atomic_file

META_KEY = b"pssl"


def write_table(frame: pd.DataFrame, path: str | os.PathLike, meta: dict) -> None:
    """Write `frame` as parquet with the pipeline's metadata, atomically."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta)})
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """Read a parquet table written by `write_table`: (frame, pipeline metadata)."""
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    return table.to_pandas(), meta


def read_meta(path: str | os.PathLike) -> dict:
    """The pipeline metadata of a table, from its footer alone."""
    return json.loads((pq.read_schema(path).metadata or {}).get(META_KEY, b"{}"))


def count_rows(path: str | os.PathLike) -> int:
    """Rows of a parquet table, from its footer alone (the workflow sizes SLURM runtimes with it)."""
    return pq.ParquetFile(path).metadata.num_rows
