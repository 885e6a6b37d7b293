"""Running digests of decisions, for comparing TP ranks: equal digests, same decisions."""

from __future__ import annotations

import struct
import zlib


def digest_of(digest: int, *values: int) -> int:
    """``digest`` (a CRC-32) extended by ``values``, each as a signed 64-bit integer."""
    return zlib.crc32(struct.pack(f"<{len(values)}q", *values), digest)
