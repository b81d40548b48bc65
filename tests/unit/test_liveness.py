"""authsvc.liveness: progress reaches the worker's notify, at most once per interval."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from authsvc import liveness


@pytest.fixture(autouse=True)
def _uninstalled() -> Iterator[None]:
    yield
    liveness.install(None)


def test_progress_without_a_worker_does_nothing() -> None:
    liveness.install(None)
    liveness.progress()  # no error, nothing to call


def test_progress_notifies_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(liveness.time, "monotonic", lambda: now[0])
    calls: list[float] = []
    liveness.install(lambda: calls.append(now[0]))
    liveness.progress()
    liveness.progress()
    now[0] += liveness.INTERVAL / 2
    liveness.progress()
    assert calls == [1000.0]
    now[0] += liveness.INTERVAL / 2
    liveness.progress()
    assert calls == [1000.0, 1000.0 + liveness.INTERVAL]
