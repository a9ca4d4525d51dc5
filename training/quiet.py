"""When training may start: the quiet window.

Training competes with serving for the CPU (and the GPU, if local models serve from it), so
the scheduler only starts jobs when the proxy is quiet: inside configured hours, and/or
while the request rate over the last few minutes is below a threshold. Both are optional;
with neither configured every moment is quiet. Pure functions over a clock value, so tests
drive them with a fake clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time

_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class QuietWindow:
    hours: tuple[time, time] | None = None  # local wall-clock window; may wrap midnight (22:00-06:00)
    max_requests_per_minute: float | None = None  # quiet while the recent rate is below this
    rate_window_minutes: int = 5  # how far back "recent" reaches

    @classmethod
    def parse(
        cls, hours: str | None, max_requests_per_minute: float | None = None, rate_window_minutes: int = 5
    ) -> QuietWindow:
        window = None
        if hours:
            match = _HOURS.match(hours)
            if not match:
                raise ValueError(f"quiet hours must look like 22:00-06:00, got {hours!r}")
            h1, m1, h2, m2 = (int(g) for g in match.groups())
            if not (0 <= h1 < 24 and 0 <= h2 < 24 and 0 <= m1 < 60 and 0 <= m2 < 60):
                raise ValueError(f"quiet hours out of range: {hours!r}")
            window = (time(h1, m1), time(h2, m2))
        return cls(window, max_requests_per_minute, rate_window_minutes)

    def in_hours(self, now: datetime) -> bool:
        if self.hours is None:
            return True
        start, end = self.hours
        t = now.time()
        return start <= t < end if start <= end else (t >= start or t < end)

    def is_quiet(self, now: datetime, recent_requests: int) -> tuple[bool, str]:
        """(quiet?, why) given the clock and the number of requests in the last `rate_window_minutes`."""
        if self.hours is not None and not self.in_hours(now):
            return False, f"outside quiet hours {self.hours[0]:%H:%M}-{self.hours[1]:%H:%M}"
        if self.max_requests_per_minute is not None:
            rate = recent_requests / self.rate_window_minutes
            if rate >= self.max_requests_per_minute:
                return (
                    False,
                    f"busy: {rate:.1f} req/min over {self.rate_window_minutes} min (limit {self.max_requests_per_minute:g})",
                )
        return True, "quiet"
