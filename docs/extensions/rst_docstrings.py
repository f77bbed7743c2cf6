"""A Griffe extension: render the project's reST-flavoured docstrings as Markdown.

The docstrings follow Python's own conventions (``>>>`` doctests that pytest runs, ``::`` literal
blocks, ``:class:`X``` roles, ```text <url>`_`` links). mkdocstrings reads docstrings as
Markdown, where a ``>>>`` line is a nested block quote and ``[...]`` in doctest output looks like
a cross-reference. This extension rewrites each docstring once the object tree is loaded:

- a run of lines starting with ``>>>`` (with its output, up to a blank line) becomes a fenced
  ``pycon`` block;
- a paragraph ending in ``::`` keeps one ``:``, and the indented block after it becomes a fenced
  code block;
- ``:role:`target``` becomes the code span ``target`` (``~a.b.c`` gives ``c``, ``title <target>``
  gives ``title``), and ```text <url>`_`` a Markdown link.

Configured in ``mkdocs.yml`` under the python handler's ``extensions``.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Module, Object

__all__ = ["ReSTDocstrings", "to_markdown"]

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const|term):`([^`]+)`")
_LINK = re.compile(r"`([^`<]+?) <(https?://[^>]+)>`__?")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _role(match: re.Match[str]) -> str:
    target = match.group(1)
    titled = re.fullmatch(r"(.+?)\s*<[^>]+>", target)
    if titled:
        return f"`{titled.group(1)}`"
    if target.startswith("~"):
        return f"`{target.rsplit('.', 1)[-1]}`"
    return f"`{target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def to_markdown(text: str) -> str:
    """Rewrite one docstring's reST idioms as Markdown (idempotent; see ``tests/test_docs.py``)."""
    lines = text.split("\n")
    out: list[str] = []
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if _FENCE.match(line):
            in_fence = not in_fence
            out.append(line)
            continue
        if in_fence:
            out.append(line)
            continue
        stripped = line.lstrip()
        if stripped.startswith(">>>"):
            indent = line[: _indent(line)]
            out.append(f"{indent}```pycon")
            out.append(line)
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
            out.append(f"{indent}```")
            continue
        line = _LINK.sub(r"[\1](\2)", _ROLE.sub(_role, line))
        if not line.rstrip().endswith("::"):
            out.append(line)
            continue
        # A literal block: the paragraph keeps one colon, the indented lines become a fence.
        head = line.rstrip()[:-1]
        out.append("" if not head.strip(" :") else head)
        base, block = _indent(line), []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            i -= 1  # give trailing blank lines back
            block.pop()
        while block and not block[0].strip():
            block.pop(0)
        if block:
            cut = min(_indent(b) for b in block if b.strip())
            out += ["", "```", *(b[cut:] if b.strip() else "" for b in block), "```"]
    return "\n".join(out)


class ReSTDocstrings(Extension):
    """Convert every loaded object's docstring with :func:`to_markdown`."""

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        """Rewrite the top-level package's docstring (``on_object`` sees only its members)."""
        self.on_object(obj=pkg)

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring in place."""
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
