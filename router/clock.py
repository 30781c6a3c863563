"""Where the router's timestamps come from: one small interface.

``Clock.now()`` returns Unix seconds (float). ``LocalClock`` reads the host clock; an
NTP-corrected clock (a later issue) adds a measured offset behind the same method.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class LocalClock:
    def now(self) -> float:
        return time.time()
