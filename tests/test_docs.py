from __future__ import annotations

from pathlib import Path

import pytest

from car.docs import parse_todos, read_doc, write_doc
from car.errors import StaleEtag

QA_TODO = ("- [ ] strip the `<!--` comment markers from the README\n- [ ] second real item\n"
           "- [ ] third real item\n")


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
    # `<!--` hides items only where CommonMark makes it a comment (QA)
    (QA_TODO, 0, 3),  # QA: in backticks, mid-line, unclosed: text
    ("- [ ] one\n```html\n<!-- template start\n<div>\n```\n- [ ] two\n- [ ] three\n", 0, 3),  # in a fence: text
    ("Comments start with <!-- and end later\n- [ ] a\n- [x] b\n", 1, 1),  # mid-line in prose: text
    ("Some text\n    <!-- four spaces in: not a block\n- [ ] a\n", 0, 1),
    ("<!-->\n- [ ] a\n", 0, 1),  # `<!-->` is a whole comment (CommonMark 0.31)
    ("```bash``` is inline code, not a fence\n- [ ] a\n", 0, 1),
    ("- [ ] a <!-- an inline note --> b\n- [ ] c <!-- unclosed on an item line\n- [ ] d\n", 0, 3),
    # real comment blocks still hide their example items
    ("- [ ] real\n<!-- example:\n- [ ] ex1\n- [x] ex2\n-->\n- [x] done\n", 1, 1),
    ("   <!-- three spaces in is still a block\n- [ ] hidden\n-->\n- [ ] shown\n", 0, 1),
    # an item after `-->` on its line is counted (CommonMark would make it raw HTML): a missed one ends the loop
    ("<!-- a\n- [ ] hidden\n--> - [ ] after the close\n- [ ] shown\n", 0, 2),
    ("<!-- note --> - [x] after a one-line comment\n<!--> * [ ] b\n", 1, 1),
    ("<!--\n- [ ] an unclosed block runs to the end (CommonMark)\n- [ ] hidden\n", 0, 0),
    ("<!--\n```\n-->\n- [ ] a fence inside a comment opens nothing\n", 0, 1),
    ("<!--\r\n- [ ] hidden\r\n-->\r\n- [ ] shown\r\n", 0, 1),
    # blocks inside list items: indented under the item, and ending with it
    ("- [ ] parent\n  <!--\n  - [ ] hidden\n  -->\n- [ ] next\n", 0, 2),
    ("- [ ] parent\n    - [ ] child\n    <!--\n    - [ ] hidden\n    -->\n", 0, 2),
    ("- [ ] a\n  <!-- unclosed inside the item\n- [ ] b: a new item ends it\n", 0, 2),
    ("- <!-- an item whose content is a comment\n  - [ ] hidden\n  -->\n- [ ] shown\n", 0, 1),
    ("- [ ] a\nlazy text -->\n\n  <!-- in item a, after its lazy line\n* [ ] c\n", 0, 2),
    # fences follow the same rules: inside an item they end with it, and only a bare fence closes one
    ("- [ ] a\n  ```\n- [ ] b: an unclosed fence in item a ends with it\n", 0, 2),
    ("```\n```python\n```\n- [ ] after the real closing fence\n", 0, 1),
    ("```\n    ```\n```\n- [ ] after the real closing fence\n", 0, 1),
    ("- ```\n  - [ ] code in the item's fence\n- [ ] b\n", 0, 1),
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
    assert path.read_bytes() == b"\xef\xbb\xbf- [x] only item\n"  # the file keeps its BOM


def test_missing_doc_reads_empty(tmp_path: Path) -> None:
    assert read_doc(tmp_path / "nope.md").content == ""
