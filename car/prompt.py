"""Rendering the agent's prompt from the template, the docs and the previous run's output."""

from __future__ import annotations

from typing import Mapping

DEFAULT_TEMPLATE = """\
You are a coding agent working in this repository, run again and again by codex-autorunner
until the TODO checklist below is done. Each run you get the docs and your previous output.

Work on the first unchecked item of the TODO list. When it is done, tick it in
.codex-autorunner/TODO.md (`- [ ]` becomes `- [x]`), add what you did and learned to
.codex-autorunner/PROGRESS.md, and record design decisions in .codex-autorunner/OPINIONS.md.
Keep changes small and the project working. If you cannot continue without a human, print a
line starting with `BLOCKED:` and say what you need.

<SPEC>
{{SPEC}}
</SPEC>

<TODO>
{{TODO}}
</TODO>

<PROGRESS>
{{PROGRESS}}
</PROGRESS>

<OPINIONS>
{{OPINIONS}}
</OPINIONS>

<PREVIOUS_RUN_OUTPUT>
{{PREV_RUN_OUTPUT}}
</PREVIOUS_RUN_OUTPUT>
"""

PLACEHOLDERS = ("TODO", "PROGRESS", "OPINIONS", "SPEC", "PREV_RUN_OUTPUT")


def clip_tail(text: str, max_chars: int) -> str:
    """The last `max_chars` characters: the end of a run says most about where it stopped."""
    return text[len(text) - max_chars:] if len(text) > max_chars else text


def render_prompt(template: str, docs: Mapping[str, str], prev_output: str, max_prev_chars: int) -> str:
    """Fill each placeholder once; text inside the docs is never re-expanded."""
    values = {name: docs.get(name.lower(), "") for name in PLACEHOLDERS[:4]}
    values["PREV_RUN_OUTPUT"] = clip_tail(prev_output, max_prev_chars)
    out, i = [], 0
    while True:
        j = template.find("{{", i)
        if j < 0:
            out.append(template[i:])
            break
        k = template.find("}}", j)
        name = template[j + 2:k] if k >= 0 else None
        if name in values:
            out.append(template[i:j])
            out.append(values[name])
            i = k + 2
        else:
            out.append(template[i:j + 2])
            i = j + 2
    return "".join(out)
