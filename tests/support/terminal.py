"""Reading what `segments watch` draws: terminal output as text, the last frame, its rows."""

from __future__ import annotations

import re

# CSI sequences (cursor moves, erases, colours) and OSC ones, as rich writes them.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[=>78]")


def plain(output: bytes) -> str:
    return _ESCAPES.sub("", output.decode("utf-8", "replace")).replace("\r", "")


def last_frame(text: str, title: str) -> str:
    """The text from the last drawing of the table titled ``title`` on ("" if none)."""
    at = text.rfind(title)
    return "" if at < 0 else text[at:]


def table_rows(frame: str) -> list[list[str]]:
    """The body rows of a drawn table, as their cells' text."""
    return [[cell.strip() for cell in line.split("│")] for line in frame.splitlines()
            if "│" in line]
