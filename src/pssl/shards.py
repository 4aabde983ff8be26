"""Contiguous shards of the index: `shard-00000.parquet`, ... with `shard_size` rows each (the last may be short)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from pssl.errors import InputError
from pssl.io import atomic_dir
from pssl.tables import read_table, write_table

log = logging.getLogger(__name__)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def write_shards(index: str | os.PathLike, shard_size: int, out_dir: str | os.PathLike) -> list[str]:
    if shard_size < 1:
        raise InputError(f"shard_size must be >= 1, got {shard_size}")
    frame, meta = read_table(index)
    n_shards = math.ceil(len(frame) / shard_size)
    names = [shard_name(i) for i in range(n_shards)]
    with atomic_dir(out_dir) as tmp:
        for i, name in enumerate(names):
            part = frame.iloc[i * shard_size:(i + 1) * shard_size]
            write_table(part, Path(tmp) / f"{name}.parquet", {**meta, "shard": name, "shard_size": shard_size})
    log.info(f"{len(frame)} images -> {n_shards} shards of <= {shard_size} in {out_dir}")
    return names


def list_shards(shard_dir: str | os.PathLike) -> list[str]:
    return sorted(p.stem for p in Path(shard_dir).glob("shard-*.parquet"))
