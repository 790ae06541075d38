"""Text that users control (photo keys, reasons) shown safely in Prefect markdown artifacts.

A key is any file name a bucket allows: backticks, asterisks, brackets and ``<`` would
otherwise format the report, break its layout or open a link.
"""

from __future__ import annotations

import re

_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def escape(text: str) -> str:
    """``text`` as literal markdown text (every markdown-active character escaped)."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def code(text: str) -> str:
    """``text`` as an inline code span: a fence longer than any backtick run inside it."""
    text = " ".join(str(text).split())
    runs = [len(run) for run in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
