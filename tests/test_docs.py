from __future__ import annotations

from pathlib import Path

import pytest

from car.docs import parse_todos, read_doc, write_doc
from car.errors import StaleEtag


@pytest.mark.parametrize("text, done, outstanding", [
    ("- [ ] a\n- [x] b\n- [X] c\n", 2, 1),
    ("* [ ] star\n  - [ ] indented\n+ [x] plus\n", 1, 2),
    ("```\n- [ ] fenced\n```\n- [ ] real\n", 0, 1),
    ("~~~md\n- [ ] tilde fence\n~~~\n", 0, 0),
    ("<!-- - [ ] hidden -->\n- [ ] shown\n", 0, 1),
    ("<!--\n- [ ] multi\n- [x] line\n-->\n- [x] after\n", 1, 0),
    ("- [ ]no space is not an item\n-[ ] nor this\n", 0, 0),
    ("````\n```\n- [ ] nested fence stays inside\n```\n````\n", 0, 0),
    ("", 0, 0),
])
def test_parse_todos(text: str, done: int, outstanding: int) -> None:
    counts = parse_todos(text)
    assert (counts.done, counts.outstanding) == (done, outstanding)


def test_unclosed_fence_hides_the_rest() -> None:
    assert parse_todos("- [ ] a\n```\n- [ ] b\n").outstanding == 1


def test_write_with_stale_etag_conflicts_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "TODO.md"
    path.write_text("one\n")
    first = read_doc(path)
    path.write_text("changed elsewhere\n")
    with pytest.raises(StaleEtag, match="changed since it was loaded"):
        write_doc(path, "mine\n", etag=first.etag)
    assert path.read_text() == "changed elsewhere\n"
    fresh = read_doc(path)
    assert write_doc(path, "mine\n", etag=fresh.etag).content == "mine\n"
    assert path.read_text() == "mine\n"


def test_a_leading_bom_is_not_part_of_a_doc_and_its_etag_still_works(tmp_path: Path) -> None:
    path = tmp_path / "TODO.md"
    path.write_bytes(b"\xef\xbb\xbf- [ ] only item\n")
    doc = read_doc(path)
    assert doc.content == "- [ ] only item\n" and parse_todos(doc.content).outstanding == 1
    assert write_doc(path, "- [x] only item\n", etag=doc.etag).content == "- [x] only item\n"
    assert path.read_bytes() == b"- [x] only item\n"  # written back through the API: the BOM is gone


def test_missing_doc_reads_empty(tmp_path: Path) -> None:
    assert read_doc(tmp_path / "nope.md").content == ""
