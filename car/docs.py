"""The four markdown docs: reading and writing them with etags, and counting TODO items."""

from __future__ import annotations

import re
from codecs import BOM_UTF8
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import List, Optional

from car.errors import CarError, Conflict, StaleEtag
from car.files import decode_doc, newlines_as_lf, read_bytes, read_text, write_atomic, write_error


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


# a list item, matched after the line's indent: its marker, the blanks after it, and a checkbox (a TODO
# item when the marker is a bullet)
_LIST_ITEM = re.compile(r"([-*+]|\d{1,9}[.)])(\s+|$)(?:\[([ xX])\]\s)?")
_BULLETS, _MARKER_STARTS = ("-", "*", "+"), "-*+0123456789"
# CommonMark: a backtick fence's info string holds no backtick (```foo``` is inline code, not a fence)
_FENCE = re.compile(r"(`{3,}(?!.*`)|~{3,})")
_BREAK = re.compile(r"([-*_])(?:[ \t]*\1){2,}[ \t]*$")  # a thematic break, not a list item (`* * *`)
_HEADING = re.compile(r"#{1,6}(?:\s|$)")
_SETEXT = re.compile(r"(?:-+|=+)[ \t]*$")
_COMMENT_START, _COMMENT_END = "<!--", "-->"


def parse_todos(text: str) -> TodoCounts:
    """Count checklist items, ignoring those in code fences and HTML comment blocks, as CommonMark finds them."""
    # One pass over the lines, no regex across them: a 10 MB TODO takes well under a second. It follows
    # CommonMark's blocks as far as they decide what is hidden: list items (a block inside one ends with
    # it), lazy continuation lines, quotes, headings; where it must guess, it counts an item rather than
    # hide it, since a hidden item ends the loop with work left.
    ticks = dict.fromkeys((None, " ", "x", "X"), 0)  # by checkbox (None: no item) as the items come
    items: List[int] = []  # content columns of the open list items, outermost first
    block: Optional[str] = None  # the open fence's marker, or _COMMENT_START in a comment block
    bound = 0  # the indent a line needs to stay in that block: the content column of its list item
    paragraph = False  # the last line was paragraph text, which a less indented line may continue (lazily)
    quoted = False  # ... text in a `>` quote, which any line but a block's start continues
    for line in text.splitlines():
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if indent and "\t" in line[:indent]:
            indent = _indent(line, stripped)
        if block is not None:
            if not bound or not stripped or indent >= bound:
                if block != _COMMENT_START:
                    if indent - bound <= 3 and _closes_fence(stripped, block):
                        block = None
                elif _COMMENT_END in line:  # CommonMark: the block runs to the line holding `-->`
                    block = None
                    ticks[_checkbox_after(line, line.find(_COMMENT_END))] += 1
                continue
            block = None  # its list item ended, and the block with it (CommonMark: no lazy lines in blocks)
        if not stripped:
            paragraph = False
            continue
        first = stripped[0]
        list_item = _LIST_ITEM.match(stripped) if first in _MARKER_STARTS else None
        if paragraph and (quoted or (items and indent < items[-1])) and not _starts_block(stripped, list_item):
            continue  # a lazy continuation line: still inside its item or quote, and no item itself
        depth = len(items)
        while items and items[-1] > indent:
            items.pop()  # not indented enough to be inside that item any more
        inner = items[-1] if items else 0
        was_paragraph, underlines = paragraph, paragraph and not quoted and depth == len(items)
        paragraph = quoted = False
        if underlines and first in "-=" and _SETEXT.match(stripped):
            continue  # under paragraph text, `-` is a heading's underline, not an empty list item
        # `<!--` and fences open blocks after at most 3 spaces (counted from the list item's content);
        # further in, or anywhere mid-line, `<!--` is text: an unclosed one there hides nothing
        if indent - inner <= 3:
            if first in "`~":
                fence = _FENCE.match(stripped)
                if fence:
                    block, bound = fence.group(1), inner
                    continue
            elif first == "<" and stripped.startswith(_COMMENT_START):
                end = line.find(_COMMENT_END, len(line) - len(stripped) + 2)  # from 2: `<!-->` is whole too
                if end < 0:
                    block, bound = _COMMENT_START, inner
                else:
                    ticks[_checkbox_after(line, end)] += 1
                continue
            elif first == "#" and _HEADING.match(stripped):
                continue
            elif first == ">":
                paragraph = quoted = True
                continue
            elif first in "-*_" and (list_item is None or list_item.group(3) is None) and _BREAK.match(stripped):
                continue
        if list_item is None:
            paragraph = was_paragraph or indent - inner <= 3  # else a line of indented code
            continue
        marker, gap, box = list_item.groups()
        rest = stripped[list_item.end(2):]
        width = len(gap.expandtabs(4)) if "\t" in gap else len(gap)
        # CommonMark: the item's content starts after the marker and its 1-4 blanks (1 if more, or none)
        items.append(indent + len(marker) + (width if rest and width <= 4 else 1))
        fence = _FENCE.match(rest) if rest[:1] in ("`", "~") else None
        if box is not None and marker in _BULLETS:
            ticks[box] += 1
            paragraph = True
        elif rest.startswith(_COMMENT_START):  # `- <!--`: a comment block as the item's content
            if _COMMENT_END not in rest[2:]:
                block, bound = _COMMENT_START, items[-1]
        elif fence:  # `- ````: a fence as the item's content
            block, bound = fence.group(1), items[-1]
        else:
            paragraph = bool(rest)
    return TodoCounts(done=ticks["x"] + ticks["X"], outstanding=ticks[" "])


def _starts_block(stripped: str, list_item: Optional[re.Match[str]]) -> bool:
    """Whether a line opens a block of its own, and so cannot continue a paragraph lazily."""
    first = stripped[0]
    if list_item is not None or first == ">":
        return True
    if first in "`~":
        return _FENCE.match(stripped) is not None
    if first in "<#":
        return stripped.startswith(_COMMENT_START) or _HEADING.match(stripped) is not None
    return first in "-*_" and _BREAK.match(stripped) is not None


def _closes_fence(stripped: str, marker: str) -> bool:
    """CommonMark: a closing fence is the opening's character, at least as many, and nothing after."""
    run = stripped.rstrip()
    return len(run) >= len(marker) and run == marker[0] * len(run)


def _checkbox_after(line: str, end: int) -> Optional[str]:
    """The checkbox of a TODO item after a comment block's `-->` on its line: CommonMark makes that
    text part of the HTML block, but it is work someone wrote down, and a missed item ends the loop."""
    list_item = _LIST_ITEM.match(line[end + len(_COMMENT_END):].lstrip())
    return list_item.group(3) if list_item and list_item.group(1) in _BULLETS else None


def _indent(line: str, stripped: str) -> int:
    """The column of a line's first non-blank character (`stripped` = line.lstrip()), tabs as CommonMark's."""
    return len(line[:len(line) - len(stripped)].expandtabs(4))


def etag_of(content: str) -> str:
    import hashlib  # here: only the web's edits need etags, and hashlib's OpenSSL costs ~4 ms a start

    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]


def read_doc(path: Path) -> Doc:
    """A missing doc reads as empty; writing it creates it."""
    content = read_text(path)
    return Doc(content, etag_of(content))


def write_doc(path: Path, content: str, etag: Optional[str] = None) -> Doc:
    """Write a doc in the file's own form (its BOM, its line ends); with an etag, only if the doc still
    has it (else StaleEtag, nothing written)."""
    try:
        raw = read_bytes(path)
    except CarError:
        if etag is not None:
            raise
        raw = None  # nothing to compare with: the write itself says what is wrong (a directory in its place)
    current = "" if raw is None else decode_doc(raw, path)  # a UTF-16 doc is refused, never overwritten
    if etag is not None and etag_of(current) != etag:
        raise _stale(path, etag, current)
    content = newlines_as_lf(content)  # as the doc reads back: one etag
    if raw is not None:
        if content == current:
            return Doc(current, etag_of(current))  # unchanged: every byte stays, those it cannot show too
        if "\ufffd" in current:
            _refuse_lossy_save(path, raw)
    def unchanged_since_read() -> None:
        """The agent may write the doc while this save writes and syncs its copy: looked at again last,
        so that an edit made meanwhile is refused (StaleEtag), not replaced unseen."""
        now = read_bytes(path)
        if now != raw:
            raise _stale(path, etag, "" if now is None else decode_doc(now, path))

    try:  # all or nothing: a failed write leaves the doc as it was
        write_atomic(path, _in_form_of(raw, content), check=unchanged_since_read if etag is not None else None)
    except OSError as exc:  # an immutable doc, a directory in its place, a full disk
        raise write_error(path, exc) from exc
    return Doc(content, etag_of(content))


def _stale(path: Path, etag: Optional[str], current: str) -> StaleEtag:
    return StaleEtag(f"{path.name} changed since it was loaded (etag {etag} is stale, "
                     f"now {etag_of(current)}); reload it and apply your edit again")


def _refuse_lossy_save(path: Path, raw: bytes) -> None:
    """A Conflict if the doc holds bytes that are not UTF-8: its text shows them as U+FFFD, and
    writing that text would replace them for good (the editor cannot carry them back)."""
    body = raw[len(BOM_UTF8):] if raw.startswith(BOM_UTF8) else raw
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + len(raw) - len(body)
        line = raw.count(b"\n", 0, offset) + 1
        raise Conflict(f"{path}:{line}: not UTF-8 text (byte 0x{raw[offset]:02x} at offset {offset}), and saving "
                       f"would replace it with U+FFFD for good; convert the file to UTF-8 (e.g. iconv -f cp1252 "
                       f"-t utf-8), then reload and edit again") from None


def _in_form_of(raw: Optional[bytes], content: str) -> bytes:
    """`content` as bytes in the form of the file `raw` came from: its BOM, its most common line end."""
    if raw is None:
        return content.encode("utf-8")
    crlf = raw.count(b"\r\n")
    lf, cr = raw.count(b"\n") - crlf, raw.count(b"\r") - crlf
    eol = "\r\n" if crlf > max(lf, cr) else "\r" if cr > max(lf, crlf) else "\n"  # a tie stays \n
    if eol != "\n":
        content = content.replace("\n", eol)
    return (BOM_UTF8 if raw.startswith(BOM_UTF8) else b"") + content.encode("utf-8")
