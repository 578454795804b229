"""
How netsuite talks to PostgreSQL without blocking the reactor: three ways side by side.

  - C{pool}: psycopg 3's C{ConnectionPool} on threads of netsuite's own
    (L{netsuite.db.pool.Database}, what the server uses);
  - C{adbapi}: Twisted's C{adbapi.ConnectionPool} over psycopg 3;
  - C{asyncio}: psycopg's C{AsyncConnectionPool} on Twisted's asyncio reactor.

Each runs in a process of its own (the asyncio one needs its reactor installed
first) against one throwaway cluster (tests/pg.py), with C{--concurrency}
queries in flight out of C{--queries}: a one-row look-up by primary key, what
a login does, on autocommit connections in all three (one round trip each, as
netsuite runs one-statement work).  Rounds alternate (bench/rounds.py); the figures are queries per
second (wall clock) and the client process's CPU microseconds per query.

    python bench/db_bench.py [--rounds 5] [--queries 5000] [--concurrency 50]
    python bench/db_bench.py --smoke
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rounds import alternate, fmt_ratio, median, median_ratio  # noqa: E402

MODES = ("pool", "adbapi", "asyncio")
POOL_SIZE = 10
ROWS = 1000
QUERY = "SELECT hash FROM bench_users WHERE name = %s"


def child(mode: str, dsn: str, queries: int, concurrency: int) -> None:
    """One measurement in this process: print its figures as JSON."""
    if mode == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import defer, task

    names = [f"user{i}" for i in range(ROWS)]
    lookup = make_lookup(mode, dsn)

    async def main() -> dict[str, float]:
        await lookup("user0")  # connections up before the clock starts
        semaphore = defer.DeferredSemaphore(concurrency)
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        results = await defer.gatherResults(
            [semaphore.run(lookup, names[i % ROWS]) for i in range(queries)])
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        assert all(results), "a look-up found nothing"
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return {"qps": queries / wall, "cpu_us": cpu / queries * 1e6}

    def run(reactor):
        return defer.Deferred.fromCoroutine(main()).addCallback(
            lambda figures: print(json.dumps(figures)))

    task.react(lambda r: run(r))


def make_lookup(mode: str, dsn: str):
    """C{lookup(name) -> Deferred(hash)} the C{mode} way."""
    from twisted.internet import defer, reactor

    if mode == "pool":
        from netsuite.config import DatabaseConfig
        from netsuite.db.pool import Database

        db = Database(DatabaseConfig(dsn=dsn, pool_size=POOL_SIZE), reactor)

        def work(conn, name):
            return conn.execute(QUERY, (name,)).fetchone()[0]

        return lambda name: db.run(work, name)
    if mode == "adbapi":
        from twisted.enterprise import adbapi

        cp = adbapi.ConnectionPool("psycopg", dsn, cp_min=POOL_SIZE, cp_max=POOL_SIZE,
                                   cp_reconnect=True, autocommit=True)

        def first(rows):
            return rows[0][0]

        return lambda name: cp.runQuery(QUERY, (name,)).addCallback(first)
    if mode == "asyncio":
        import asyncio

        from psycopg_pool import AsyncConnectionPool

        apool = AsyncConnectionPool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, open=False,
                                    kwargs={"autocommit": True})
        opened: list = []

        async def query(name):
            if not opened:
                opened.append(True)
                await apool.open()
            async with apool.connection() as conn:
                cur = await conn.execute(QUERY, (name,))
                return (await cur.fetchone())[0]

        return lambda name: defer.Deferred.fromFuture(asyncio.ensure_future(query(name)))
    raise SystemExit(f"unknown mode {mode!r}")


def measure(mode: str, dsn: str, queries: int, concurrency: int) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--child", mode, "--dsn", dsn,
                           "--queries", str(queries), "--concurrency", str(concurrency)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--smoke", action="store_true", help="one short round (tests)")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--dsn", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.dsn, args.queries, args.concurrency)
        return 0
    if args.smoke:
        args.rounds, args.queries = 1, 500
    from pg import Cluster

    cluster = Cluster()
    try:
        dsn = cluster.new_database()
        dbname = dsn.rpartition("dbname=")[2]
        cluster.execute("CREATE TABLE bench_users (name text PRIMARY KEY, hash text NOT NULL);"
                        f"INSERT INTO bench_users SELECT 'user' || i, md5(i::text) "
                        f"FROM generate_series(0, {ROWS - 1}) i", dbname)
        results = alternate(args.rounds, {m: (lambda m=m: measure(m, dsn, args.queries,
                                                                  args.concurrency))
                                          for m in MODES},
                            show=lambda r, name, f: print(
                                f"  round {r + 1} {name:8} {f['qps']:8.0f} q/s "
                                f"{f['cpu_us']:6.0f} us CPU/q", flush=True))
    finally:
        cluster.destroy()
    print(f"\n{args.queries} one-row look-ups, {args.concurrency} in flight, pool of "
          f"{POOL_SIZE}; median of {args.rounds} rounds (busy machine: rough figures)")
    print(f"{'':24}{'pool':>10}{'adbapi':>10}{'asyncio':>10}{'pool/adbapi':>13}"
          f"{'pool/asyncio':>14}")
    for key, label in (("qps", "queries/s"), ("cpu_us", "client CPU us/query")):
        print(f"{label:24}" + "".join(f"{median(results[m], key):10.0f}" for m in MODES)
              + f"{fmt_ratio(median_ratio(results['pool'], results['adbapi'], key)):>13}"
              + f"{fmt_ratio(median_ratio(results['pool'], results['asyncio'], key)):>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
