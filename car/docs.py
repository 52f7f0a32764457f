"""The four markdown docs: reading and writing them with etags, and counting TODO items."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

from car.errors import StaleEtag
from car.files import read_text, write_atomic, write_error


class DocKind(str, Enum):
    TODO = "todo"
    PROGRESS = "progress"
    OPINIONS = "opinions"
    SPEC = "spec"


@dataclass(frozen=True)
class TodoCounts:
    done: int
    outstanding: int

    @property
    def total(self) -> int:
        return self.done + self.outstanding


@dataclass(frozen=True)
class Doc:
    content: str
    etag: str

    def to_json(self) -> dict[str, str]:
        return {"content": self.content, "etag": self.etag}


_ITEM = re.compile(r"^\s*[-*+]\s+\[([ xX])\]\s")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_COMMENT = re.compile(r"<!--.*?-->", re.S)


def parse_todos(text: str) -> TodoCounts:
    """Count checklist items, ignoring those in code fences and HTML comments."""
    text = _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    text = re.sub(r"<!--.*", "", text, flags=re.S)  # an unclosed comment hides the rest
    done = outstanding = 0
    fence: Optional[str] = None
    for line in text.splitlines():
        fence_match = _FENCE.match(line)
        if fence_match:
            marker = fence_match.group(1)
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = None  # CommonMark: same character, at least as long as the opening
            continue
        if fence:
            continue
        item = _ITEM.match(line)
        if item:
            if item.group(1) == " ":
                outstanding += 1
            else:
                done += 1
    return TodoCounts(done=done, outstanding=outstanding)


def etag_of(content: str) -> str:
    import hashlib  # here: only the web's edits need etags, and hashlib's OpenSSL costs ~4 ms a start

    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]


def read_doc(path: Path) -> Doc:
    """A missing doc reads as empty; writing it creates it."""
    content = read_text(path)
    return Doc(content, etag_of(content))


def write_doc(path: Path, content: str, etag: Optional[str] = None) -> Doc:
    """Write a doc; with an etag, only if the doc still has it (else StaleEtag, nothing written)."""
    if etag is not None:
        current = read_doc(path)
        if current.etag != etag:
            raise StaleEtag(f"{path.name} changed since it was loaded (etag {etag} is stale, "
                           f"now {current.etag}); reload it and apply your edit again")
    try:
        write_atomic(path, content)  # all or nothing: a failed write leaves the doc as it was
    except OSError as exc:  # an immutable doc, a directory in its place, a full disk
        raise write_error(path, exc) from exc
    return Doc(content, etag_of(content))
