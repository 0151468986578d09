"""mkdocs hook: tidy the reStructuredText habits of the docstrings in the rendered API pages.

Roles (:func:`x`, :class:`~x`, ...) become plain code, and a paragraph ending in ``::`` (which introduces a
literal block, rendered as code by Markdown's indentation rule) ends in a single colon.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):<code>~?")
_LITERAL_BLOCK_MARKER = re.compile(r"::</p>")


def on_page_content(html: str, **kwargs: object) -> str:
    return _LITERAL_BLOCK_MARKER.sub(":</p>", _ROLE.sub("<code>", html))
