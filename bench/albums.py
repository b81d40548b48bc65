"""Benchmark the albums feature's two hot spots (part of ``make bench``).

1. **Profile composition** on PostgreSQL: a user in 1,000 albums (directly and through a
   group), with 10,000 albums and 100,000 memberships in the database. Measures
   ``albums.album_grants`` (the one query the plugin profile adds) and the whole
   ``Authenticator.profile``, in process; target p99 < 5 ms.
2. **Listing an album of 5,000 studies**, first page, against the real Orthanc
   (scripts/testenv): ``albums.list_studies`` (label search with computed tags, plus the
   count); target < 300 ms.

Prints numbers; asserts nothing. ``bench/run.py`` calls :func:`main` after its own table.

Usage: ``python bench/albums.py [--lookups 2000] [--studies 5000] [--skip-orthanc]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authsvc import albums  # noqa: E402
from authsvc.albums import Caller  # noqa: E402
from authsvc.app import create_app  # noqa: E402
from authsvc.database import init_db  # noqa: E402
from authsvc.extensions import db  # noqa: E402
from authsvc.identity import Identity  # noqa: E402
from authsvc.identity import IdentityKind  # noqa: E402
from authsvc.policy import Actor  # noqa: E402
from authsvc.services import services  # noqa: E402
from tests import processes  # noqa: E402
from tests.dicom_factory import make_study  # noqa: E402

ALBUMS = 10_000
MEMBERSHIPS = 100_000
USER_ALBUMS = 1_000
USER = "bench-user"
GROUP = "bench-group"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _timed(call: Callable[[], Any], count: int) -> list[float]:
    call()  # warm up (connection pool, statement cache)
    out = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def _line(name: str, ms: list[float], target: str) -> None:
    print(
        f"{name:<52} p50 {statistics.median(ms):7.2f} ms   p99 {_percentile(ms, 0.99):7.2f} ms"
        f"   (n={len(ms)}, target {target})"
    )


def _schema_url(postgres: str) -> tuple[str, str]:
    name = "bench_" + uuid.uuid4().hex[:10]
    url = postgres.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    engine.dispose()
    sep = "&" if "?" in url else "?"
    return name, f"{url}{sep}options=-csearch_path%3D{name}"


def _seed(conn: sa.Connection) -> None:
    """10,000 albums; the user in 1,000 of them (800 directly, 200 via a group); 100,000 rows."""
    conn.execute(
        sa.text(
            "INSERT INTO album (id, name, description, label, server_id, created_by, created_at,"
            " updated_at, version) SELECT 'a' || i, 'Album ' || i, '', 'album-bench' || i, '',"
            " 'bench', now(), now(), 1 FROM generate_series(1, :n) AS i"
        ),
        {"n": ALBUMS},
    )
    conn.execute(
        sa.text(
            "INSERT INTO album_member (album_id, album_label, principal_kind, principal, role,"
            " added_by, added_at) SELECT 'a' || (i * 10), 'album-bench' || (i * 10), 'user',"
            " :user, 'viewer', 'bench', now()"
            " FROM generate_series(1, 800) AS i"
        ),
        {"user": USER},
    )
    conn.execute(
        sa.text(
            "INSERT INTO album_member (album_id, album_label, principal_kind, principal, role,"
            " added_by, added_at) SELECT 'a' || (i * 10 + 5), 'album-bench' || (i * 10 + 5),"
            " 'group', :group, 'contributor', 'bench', now()"
            " FROM generate_series(1, 200) AS i"
        ),
        {"group": GROUP},
    )
    # The rest: 99,000 memberships of 20,000 other users spread over every album.
    conn.execute(
        sa.text(
            "INSERT INTO album_member (album_id, album_label, principal_kind, principal, role,"
            " added_by, added_at) SELECT 'a' || (1 + (i % :albums)),"
            " 'album-bench' || (1 + (i % :albums)), 'user', 'u' || (i % 20000) || '-' ||"
            " (i / :albums), 'viewer', 'bench', now() FROM generate_series(1, :n) AS i"
        ),
        {"albums": ALBUMS, "n": MEMBERSHIPS - USER_ALBUMS},
    )
    conn.execute(sa.text("ANALYZE album"))
    conn.execute(sa.text("ANALYZE album_member"))


def _vacuum(url: str) -> None:
    """VACUUM (outside a transaction) so index-only scans need no heap visits, as in production."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("VACUUM ANALYZE album_member"))
    engine.dispose()


def bench_profiles(lookups: int) -> None:
    """Measure profile composition for a user in 1,000 of 10,000 albums."""
    postgres = processes.postgres_url()
    schema, url = _schema_url(postgres)
    tmp = tempfile.mkdtemp(prefix="authsvc-bench-")
    app = create_app(
        {"env": "testing", "data_dir": tmp, "database_url": url, "log_level": "warning"}
    )
    try:
        with app.app_context():
            init_db(db.engine)
            with db.engine.begin() as conn:
                _seed(conn)
                total = conn.execute(sa.text("SELECT count(*) FROM album_member")).scalar()
            _vacuum(url)
            print(f"profile composition: {ALBUMS} albums, {total} memberships, user in 1,000")
            who = Identity(
                kind=IdentityKind.USER,
                subject=USER,
                username=USER,
                groups=frozenset({"/" + GROUP}),
            )
            labels, _ = albums.album_grants(USER, who.group_names)
            assert len(labels) == USER_ALBUMS, len(labels)

            def grants() -> None:
                albums.album_grants(USER, who.group_names)

            def profile() -> None:
                services().authenticator.profile(who)

            def request() -> None:
                # As a plugin callback does: a session (pool checkout + ping) per request.
                services().authenticator.profile(who)
                db.session.remove()

            _line("album_grants (the query the profile adds)", _timed(grants, lookups), "<5 ms")
            _line("Authenticator.profile (roles + albums)", _timed(profile, lookups), "<5 ms")
            _line("profile_for + session per request", _timed(request, lookups), "<5 ms")
            print(f"  (load average during the run: {os.getloadavg()[0]:.1f})")
            db.session.remove()
            db.engine.dispose()
    finally:
        engine = sa.create_engine(postgres.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def bench_listing(n_studies: int, rounds: int) -> None:
    """Measure the first page of an album of ``n_studies`` studies in the real Orthanc."""
    state = Path(tempfile.mkdtemp(prefix="authsvc-bench-orthanc-"))
    orthanc = processes.start_orthanc(state, processes.free_port())
    try:
        started = time.perf_counter()
        session = requests.Session()

        def store(_: int) -> str:
            answer = session.post(
                f"{orthanc.url}/instances",
                data=make_study(n_series=1, n_instances=1)[0],
                timeout=60,
            )
            answer.raise_for_status()
            return str(answer.json()["ParentStudy"])

        with ThreadPoolExecutor(8) as pool:
            study_ids = list(pool.map(store, range(n_studies)))
        print(f"album listing: stored {n_studies} studies in {time.perf_counter() - started:.0f} s")
        app = create_app(
            {
                "env": "testing",
                "data_dir": str(state / "data"),
                "orthanc_url": orthanc.url,
                "log_level": "warning",
            }
        )
        with app.app_context():
            init_db(db.engine)
            admin = Caller(actor=Actor(subject="bench-admin", is_global_admin=True))
            album_id = albums.create_album(services().archive, admin, "5,000 studies").album.id
            for start in range(0, n_studies, albums.MAX_BULK):
                albums.add_studies(
                    services().archive, admin, album_id, study_ids[start : start + albums.MAX_BULK]
                )
            page = albums.list_studies(services().archive, admin, album_id, limit=50)
            assert page.total == n_studies, page.total

            def first_page() -> None:
                albums.list_studies(services().archive, admin, album_id, offset=0, limit=50)
                db.session.rollback()

            _line(
                f"list_studies first page (50 of {n_studies}, real Orthanc)",
                _timed(first_page, rounds),
                "<300 ms",
            )
            db.session.remove()
            db.engine.dispose()
    finally:
        orthanc.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the album benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--studies", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--skip-orthanc", action="store_true")
    args = parser.parse_args(argv)
    bench_profiles(args.lookups)
    if not args.skip_orthanc:
        bench_listing(args.studies, args.rounds)


if __name__ == "__main__":
    main()
