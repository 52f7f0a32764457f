"""hub_cache.bin: what a new hub process starts from, so that a repo unchanged since costs four stats.

Only car writes it, and it is a cache in the strict sense: missing, damaged, or written by another
Python or another car version, it reads as empty and the start is only slower. marshal rather than
JSON because every hub command reads it, and marshal decodes these rows ~2.5x faster.
"""

from __future__ import annotations

import marshal
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from car import __version__
from car.files import write_atomic
from car.manifest import ManifestCache

# marshal's format belongs to the Python that wrote it, and what the cache holds (parsed files, judged
# statuses) to the car that wrote it: either differing, the start is cold
MAGIC = f"car hub cache 2 {__version__} {sys.implementation.cache_tag}\n".encode("ascii")
_CRC = len(MAGIC) + 4  # a CRC-32 of the rest follows the magic: a damaged file is never unmarshalled
_INIT_ERROR = "init_error"
# hub_state.json's repos, as rows: (id, path, display name, status, error)
ListingRow = Tuple[str, str, str, str, Optional[str]]
# The listing as last built, with what proves it still holds: (manifest sha256, each repo's TODO
# path, the stamps of their files (probe.stamp_repos), the RepoEntry rows (hub_state.entry_row))
Memo = Tuple[str, List[str], List[int], List[tuple]]


@dataclass(frozen=True)
class HubCache:
    last_scan_at: Optional[str] = None
    listing: List[ListingRow] = field(default_factory=list)  # what hub_state.json lists
    state_stamp: Optional[List[int]] = None  # hub_state.json's file_stamp when it was written with `listing`
    manifest: Optional[ManifestCache] = None
    # marshalled {repo id: [path, its probe's trusted reads]}: decoded only when the probes are made,
    # which a start whose memo holds does not need
    seeds: bytes = marshal.dumps({})
    memo: Optional[Memo] = None  # only when every repo's entry can be judged from its files alone

    def init_errors(self) -> Dict[str, str]:
        """Repo id -> the message of an init that failed (shown until a retry)."""
        return {row[0]: row[4] or "init failed" for row in self.listing if row[3] == _INIT_ERROR}

    def same_content(self, other: HubCache) -> bool:
        """Equal but for the scan time: a rescan that found nothing new writes nothing."""
        return (self.listing == other.listing and self.state_stamp == other.state_stamp
                and (self.manifest or (None,))[0] == (other.manifest or (None,))[0]
                and self.seeds == other.seeds and self.memo == other.memo)

    def decode_seeds(self) -> Dict[str, Any]:
        try:
            seeds = marshal.loads(self.seeds)
        except (EOFError, ValueError, TypeError):
            return {}
        return seeds if type(seeds) is dict else {}


def encode(cache: HubCache) -> bytes:
    """The file's bytes; ValueError if something in it (a manifest's extra key) marshal cannot hold."""
    body = marshal.dumps((cache.last_scan_at, cache.listing, cache.state_stamp, cache.manifest, cache.seeds,
                          cache.memo))
    return MAGIC + zlib.crc32(body).to_bytes(4, "big") + body


def write_hub_cache(path: Path, cache: HubCache) -> None:
    # no fsync: after a crash an old or damaged cache costs a slower start, nothing else
    write_atomic(path, encode(cache), durable=False)


def read_hub_cache(path: Path) -> Optional[HubCache]:
    """The cache, or None if it is missing or anything about it is off."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if raw[:len(MAGIC)] != MAGIC or int.from_bytes(raw[len(MAGIC):_CRC], "big") != zlib.crc32(raw[_CRC:]):
        return None
    try:
        data = marshal.loads(raw[_CRC:])
    except (EOFError, ValueError, TypeError):
        return None
    if type(data) is not tuple or len(data) != 6:
        return None
    last_scan_at, listing, state_stamp, manifest, seeds, memo = data
    if not (_optional(last_scan_at, str) and _rows(listing) and _optional(state_stamp, list)
            and type(seeds) is bytes and (manifest is None or _manifest(manifest)) and (memo is None or _memo(memo))):
        return None
    return HubCache(last_scan_at, listing, state_stamp, manifest, seeds, memo)


def _optional(value: Any, kind: type) -> bool:
    return value is None or type(value) is kind


def _rows(rows: Any) -> bool:
    return type(rows) is list and all(type(row) is tuple and len(row) == 5 and type(row[0]) is str for row in rows)


def _memo(memo: Any) -> bool:
    """The memo's shape; its rows are checked as they become entries (hub_state.entries_from_rows)."""
    return (type(memo) is tuple and len(memo) == 4 and type(memo[0]) is str
            and type(memo[1]) is list and type(memo[2]) is list and type(memo[3]) is list)


def _manifest(manifest: Any) -> bool:
    return (type(manifest) is tuple and len(manifest) == 3 and type(manifest[0]) is str
            and type(manifest[1]) is dict and _rows(manifest[2]))
