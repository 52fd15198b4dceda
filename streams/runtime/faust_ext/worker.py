"""Faust's worker without its terminal spinner (written against faust-streaming 0.15.3:
``Worker.spinner``): the spinner sets the root logger to DEBUG so that it spins on every
record, and every aiokafka send then builds a log record."""

from __future__ import annotations

import asyncio
from typing import Any

import faust


def quiet_worker(app: faust.App, *services: Any, loop: asyncio.AbstractEventLoop,
                 loglevel: str) -> faust.Worker:
    worker = faust.Worker(app, *services, loglevel=loglevel, quiet=True,
                          redirect_stdouts=False, loop=loop)
    worker.spinner = None
    return worker
