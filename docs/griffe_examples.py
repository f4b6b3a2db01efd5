"""A griffe extension for the API reference: kerastl's docstrings title their
doctests `Example:`, which Google style reads as a plain admonition; as
`Examples:` they render as code."""

from __future__ import annotations

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Renames each docstring's `Example:` section to `Examples:`."""

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
