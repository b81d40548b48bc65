"""authsvc.metrics: in-process decision counters, exposed as Prometheus text on ``/metrics``.

Every plugin callback answer is counted (``callback``, ``outcome``) instead of writing an audit
row per decision: at thousands of decisions per second rows would swamp the database, while a
counter costs a dictionary update. Counters are per process (each gunicorn worker has its own;
Prometheus sums the scrapes, or scrape each worker through a multiprocess-aware proxy).
"""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["DecisionCounters"]


class DecisionCounters:
    """Thread-safe counters of decisions, keyed by (callback, outcome)."""

    def __init__(self) -> None:
        """Start with every counter at zero."""
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def count(self, callback: str, outcome: str) -> None:
        """Add one decision."""
        with self._lock:
            self._counts[(callback, outcome)] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        """Return a copy of the counters."""
        with self._lock:
            return dict(self._counts)

    def render(self) -> str:
        """Return the counters in the Prometheus text exposition format."""
        lines = [
            "# HELP authsvc_decisions_total Plugin callback answers, by callback and outcome.",
            "# TYPE authsvc_decisions_total counter",
        ]
        for (callback, outcome), value in sorted(self.snapshot().items()):
            lines.append(
                f'authsvc_decisions_total{{callback="{callback}",outcome="{outcome}"}} {value}'
            )
        return "\n".join(lines) + "\n"
