"""mkdocs hook: render the docstrings' Sphinx roles (:func:`x`, :class:`x`, ...) as plain code."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):(?=<code>)")


def on_page_content(html: str, **kwargs: object) -> str:
    return _ROLE.sub("", html)
