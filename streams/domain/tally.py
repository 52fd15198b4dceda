"""What the partitions of one role hold together, kept up to date as their stores change, so
that a probe or a metrics scrape reads it in O(1) instead of walking the families."""

from __future__ import annotations

from collections.abc import Iterable


class ProgramTally:
    """Per program, how many of the attached stores hold at least one of its families.

    A store reports a program it gains or loses (``FamilyStore._family`` and ``_drop``); a
    store is attached when its partition takes the role and detached when it leaves it, at
    a cost of its programs, not of its families."""

    __slots__ = ("holders",)

    def __init__(self) -> None:
        self.holders: dict[str, int] = {}

    def __len__(self) -> int:
        """Programs held by at least one attached store."""
        return len(self.holders)

    def gained(self, program: str) -> None:
        self.holders[program] = self.holders.get(program, 0) + 1

    def lost(self, program: str) -> None:
        n = self.holders[program] - 1
        if n:
            self.holders[program] = n
        else:
            del self.holders[program]

    def add(self, programs: Iterable[str]) -> None:
        for program in programs:
            self.gained(program)

    def remove(self, programs: Iterable[str]) -> None:
        for program in programs:
            self.lost(program)
