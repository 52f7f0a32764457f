from __future__ import annotations

from car.prompt import DEFAULT_TEMPLATE, PLACEHOLDERS, clip_tail, render_prompt

DOCS = {"todo": "T", "progress": "P", "opinions": "O", "spec": "S"}


def test_every_placeholder_is_filled() -> None:
    out = render_prompt("{{TODO}}|{{PROGRESS}}|{{OPINIONS}}|{{SPEC}}|{{PREV_RUN_OUTPUT}}", DOCS, "prev", 100)
    assert out == "T|P|O|S|prev"


def test_default_template_uses_all_placeholders() -> None:
    for name in PLACEHOLDERS:
        assert "{{" + name + "}}" in DEFAULT_TEMPLATE


def test_placeholders_inside_docs_are_not_expanded() -> None:
    docs = dict(DOCS, todo="literal {{SPEC}} stays")
    assert render_prompt("{{TODO}}", docs, "", 10) == "literal {{SPEC}} stays"


def test_unknown_braces_pass_through() -> None:
    assert render_prompt("a {{NOPE}} b {{ c", DOCS, "", 10) == "a {{NOPE}} b {{ c"


def test_previous_output_is_clipped_to_its_tail() -> None:
    prev = "x" * 50 + "END"
    assert render_prompt("{{PREV_RUN_OUTPUT}}", DOCS, prev, 10) == ("x" * 7) + "END"
    assert clip_tail("abc", 0) == ""
    assert clip_tail("abc", 5) == "abc"
