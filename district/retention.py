"""Raw readings for `raw_days`, then one row per sensor and `rollup_s` bucket (count, min, max, mean).

Worker 1 runs `fold` now and then; it works through the oldest readings in chunks, so a district that
switches retention on with years of readings catches up over several passes instead of one long lock.
Numbers (v) keep their spread; a reading of any other kind (a sum alone, text, boolean, data) keeps only its
count, as the gateway's thinning does (docs/outbox.md).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, delete, select, tuple_

from district.schema import readings, rollups
from district.store import dialect_insert

CHUNK = 10_000  # two bound parameters a reading in the final DELETE: within SQLite's and PostgreSQL's limits
Key = tuple[str, str, str, float]


def fold(conn: Connection, *, now: float, raw_days: float, rollup_s: int) -> int:
    """Fold up to CHUNK readings older than `raw_days` into their buckets; returns how many were folded."""
    cutoff = now - raw_days * 86_400
    # labelled: a Row's own attribute `t` is the row as a tuple
    rows = conn.execute(select(readings.c.message, readings.c.site, readings.c.dev, readings.c.n,
                               readings.c.t.label("at"), readings.c.u, readings.c.v).where(readings.c.t < cutoff)
                        .order_by(readings.c.t).limit(CHUNK)).all()
    if not rows:
        return 0
    acc: dict[Key, dict[str, Any]] = defaultdict(lambda: {"count": 0, "n_v": 0, "sum": 0.0, "min": None,
                                                          "max": None, "u": None})
    for r in rows:
        a = acc[(r.site, r.dev, r.n, r.at - r.at % rollup_s)]
        a["count"] += 1
        a["u"] = a["u"] or r.u
        if r.v is not None:
            a["n_v"] += 1
            a["sum"] += r.v
            a["min"] = r.v if a["min"] is None else min(a["min"], r.v)
            a["max"] = r.v if a["max"] is None else max(a["max"], r.v)
    keys = list(acc)
    old = {(r.site, r.dev, r.n, r.at): r for r in conn.execute(select(rollups, rollups.c.t.label("at")).where(
        tuple_(rollups.c.site, rollups.c.dev, rollups.c.n, rollups.c.t).in_(keys)))}
    for key, a in acc.items():
        prev = old.get(key)
        n_v, total = a["n_v"], a["sum"]
        lo, hi = a["min"], a["max"]
        count = a["count"]
        if prev is not None:
            count += prev.count
            if prev.mean is not None:
                prev_n = prev.count  # every earlier reading of a numeric bucket was a number
                total += prev.mean * prev_n
                n_v += prev_n
                lo = prev.min if lo is None else min(lo, prev.min)
                hi = prev.max if hi is None else max(hi, prev.max)
        values = {"count": count, "min": lo, "max": hi, "mean": total / n_v if n_v else None,
                  "u": a["u"] or (prev.u if prev is not None else None)}
        site, dev, n, t = key
        stmt = dialect_insert(conn, rollups).values(site=site, dev=dev, n=n, t=t, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=[rollups.c.site, rollups.c.dev, rollups.c.n,
                                                                rollups.c.t], set_=values))
    conn.execute(delete(readings).where(readings.c.t < cutoff, readings.c.t <= rows[-1].at,
                                        tuple_(readings.c.message, readings.c.n).in_(
                                            [(r.message, r.n) for r in rows])))
    return len(rows)
