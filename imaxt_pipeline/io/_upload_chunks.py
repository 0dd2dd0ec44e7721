"""Reading existing chunks of a raw store without trusting them (for :mod:`.upload`).

A resumed or repeated upload compares each stored tile with the source: the chunk's bytes are
checked (CRC-32C, Blosc header sizes) before they are decompressed, so damaged bytes mean "rewrite
this chunk", never a crash or a trusted tile.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import numcodecs.blosc
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

from .rawzarr import sha256
from .urls import Location


def _stored_digest(
    dest: Location, tiles: zarr.Array, index: tuple[int, ...], shape: tuple[int, int], zeros: str
) -> str | None:
    """SHA-256 of the tile stored at ``index``; ``None`` when absent or undecodable."""
    key = tiles.metadata.encode_chunk_key((*index, 0, 0))
    try:
        raw = dest.fs.cat_file(dest.path(tiles.path, key))
    except FileNotFoundError:
        # An absent chunk reads as the fill value (stores written before write_empty_chunks).
        return zeros if tiles.metadata.fill_value == 0 else None
    pixels = decode_chunk(bytes(raw), cast(Any, tiles.metadata).codecs, shape, tiles.dtype)
    return None if pixels is None else sha256(pixels)


def decode_chunk(
    raw: bytes, codecs: Iterable[Any], shape: tuple[int, ...], dtype: Any = np.uint16
) -> np.ndarray | None:
    """Decode one uint16 (or ``dtype``) chunk written with ``bytes [+ blosc] [+ crc32c]``; ``None`` if it is damaged.

    Unlike a zarr read, this checks the CRC-32C and Blosc's header (sizes) before
    decompressing, so truncated or garbled bytes are reported, not handed to the
    decompressor; any other codec chain is reported as undecodable (and rewritten).
    """
    chain = list(codecs)
    want = np.dtype(dtype)
    expected = int(np.prod(shape)) * want.itemsize
    if not chain or not isinstance(chain[0], BytesCodec):
        return None
    buf = raw
    for codec in reversed(chain[1:]):
        if isinstance(codec, Crc32cCodec):
            if len(buf) < 4 or np.array([_crc32c(buf[:-4])], dtype=np.uint32).tobytes() != buf[-4:]:
                return None
            buf = buf[:-4]
        elif isinstance(codec, BloscCodec):
            if len(buf) < 16:
                return None
            nbytes, cbytes = (int.from_bytes(buf[i : i + 4], "little") for i in (4, 12))
            if nbytes != expected or cbytes != len(buf):
                return None
            try:
                buf = bytes(numcodecs.blosc.decompress(buf))
            except Exception:  # any failure means "rewrite this chunk"
                return None
        else:
            return None
    if len(buf) != expected:
        return None
    endian = getattr(chain[0].endian, "value", chain[0].endian) or "little"
    stored = want.newbyteorder("<" if endian == "little" else ">")
    return np.frombuffer(buf, stored).reshape(shape).astype(want)


def _crc32c(data: bytes) -> int:
    try:
        import google_crc32c
    except ImportError:  # pragma: no cover - zarr < 3.1 used the crc32c package
        from crc32c import crc32c

        return int(crc32c(data))
    return int(google_crc32c.value(data))
