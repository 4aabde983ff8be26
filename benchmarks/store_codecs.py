"""Which codec for the decile arrays: bytes per image and write/read time on real decile maps, against
the smallest PNG of the same maps (PIL, 8-bit grey and 4-bit palette, optimize=True, each map its own file).

  python benchmarks/store_codecs.py results/explain/shard-00000.zarr
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time

import numpy as np
import zarr
from PIL import Image
from zarr.codecs import BloscCodec, BloscShuffle, GzipCodec, ZstdCodec

from pssl import store

CODECS = {
    "none": None,
    "gzip-6": GzipCodec(level=6),
    "zstd-3": ZstdCodec(level=3),
    "zstd-9": ZstdCodec(level=9),
    "blosc-lz4-shuffle": BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle),
    "blosc-zstd-bitshuffle": BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.bitshuffle),
    "blosc-zstd9-bitshuffle": BloscCodec(cname="zstd", clevel=9, shuffle=BloscShuffle.bitshuffle),
}


def png_bytes(deciles: np.ndarray) -> dict[str, float]:
    """Mean file size per map of an optimised PNG: 8-bit grey, and 4-bit palette (deciles fit in 4 bits)."""
    sizes = {"png-8bit-optimize": 0, "png-4bit-palette-optimize": 0}
    palette = [v for d in range(16) for v in (d, d, d)]
    for d in deciles:
        grey = Image.fromarray(d)
        indexed = Image.frombytes("P", grey.size, d.tobytes())
        indexed.putpalette(palette)
        for name, image, options in (("png-8bit-optimize", grey, {}),
                                     ("png-4bit-palette-optimize", indexed, {"bits": 4})):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True, **options)
            sizes[name] += buffer.tell()
    return {k: v / len(deciles) for k, v in sizes.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store")
    args = p.parse_args()
    deciles = store.open_store(args.store)["deciles"][:]
    n, s, _ = deciles.shape
    print(f"{n} decile maps of {s} x {s} ({s * s} bytes raw each) from {args.store}")
    print(f"{'codec':24s} {'bytes/image':>12s} {'ratio':>7s} {'write ms/img':>13s} {'read ms/img':>12s}")
    for name, codec in CODECS.items():
        with tempfile.TemporaryDirectory() as tmp:
            arr = zarr.create_array(tmp, shape=deciles.shape, dtype="uint8", chunks=(1, s, s),
                                    shards=(min(n, store.IMAGES_PER_ZARR_SHARD), s, s),
                                    compressors=codec, zarr_format=3)
            t = time.perf_counter()
            arr[:] = deciles
            write = time.perf_counter() - t
            t = time.perf_counter()
            back = zarr.open_array(tmp)[:]
            read = time.perf_counter() - t
            assert np.array_equal(back, deciles)
            size = store.stored_bytes(tmp, ".")
        print(f"{name:24s} {size / n:12.0f} {s * s * n / size:7.2f} {1000 * write / n:13.3f} {1000 * read / n:12.3f}")
    for name, size in png_bytes(deciles).items():
        print(f"{name:24s} {size:12.0f} {s * s / size:7.2f}")


if __name__ == "__main__":
    main()
