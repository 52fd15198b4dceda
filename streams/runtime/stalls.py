"""Noticing that this worker did not run for a while (SIGSTOP, a frozen VM, a starved host).

Its group session may have expired meanwhile and its partitions gone to other workers, who
then wrote to them. Whatever it does next on its old view (publish the changes it had taken,
send the outputs of a batch it had handled) would land after their writes: counts from the
past, published last. So after such a pause it writes nothing and does not serve for
``hold_s``, long enough for its first heartbeat to say whether the group still knows it (if
not, the revocation follows at once and the partitions' new owners stay the only writers).

The pause is seen by whoever runs first afterwards: every check is also a tick, and a
background task ticks every ``TICK_S`` so that a quiet worker does not look paused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

TICK_S = 0.1


class Stalled(Exception):
    """Not written: this worker was paused and the group may have moved its partitions."""


class StallGuard:
    def __init__(self, threshold_s: float, hold_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold_s = threshold_s
        self.hold_s = hold_s
        self._clock = clock
        self._last = clock()
        self._hold_until = float("-inf")
        self.stalls = 0

    def holding(self) -> bool:
        """Whether writes wait (a pause longer than ``threshold_s`` ended less than
        ``hold_s`` ago)."""
        now = self._clock()
        gap = now - self._last
        self._last = now
        if gap > self.threshold_s:
            self.stalls += 1
            self._hold_until = now + self.hold_s
            logger.warning("this worker did not run for %.1f s: no writes and no answers for "
                           "%.1f s, until the group has confirmed it still owns its "
                           "partitions", gap, self.hold_s)
        return now < self._hold_until

    def check(self) -> None:
        """Raise Stalled while holding."""
        if self.holding():
            raise Stalled("this worker was paused; its partitions may have moved")

    async def run(self) -> None:
        while True:
            self.holding()
            await asyncio.sleep(TICK_S)
