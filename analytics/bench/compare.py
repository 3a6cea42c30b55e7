#!/usr/bin/env python3
"""The connectivity and usage reports of herd-analytics against the same queries in DuckDB
(read_json), plain Polars (scan_ndjson) and jq, on one log: wall time, peak memory, and
whether every engine's per-device results equal ours.

Run through bench/run.sh, which builds the binaries, generates the log and installs the
engines. Each engine runs in its own process so its peak RSS is its own (os.wait4).

The definitions are the ones in analytics/src/report/{connectivity,usage}.rs: sessions
from online/offline/deleted transitions per device in time order (file order breaks
ties), repeats ignored, open sessions and "on" periods run to the range's end, clipped to
the range [from, to]; switch-ons are false->true changes of reported.on read from
rpc.out.Dash.Shadow.Update (data.state.reported.on) and updated
(data.shadow.state.reported.on). Every id seen up to the range's end is a device, except
the ids of rollout.* events, which are rollouts.
"""

import csv
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
WINDOW_S = 600.0


# --- engines, each run as `compare.py run ENGINE REPORT LOG FROM TO OUT` ------------------


def duckdb_query(report, log, t_from, t_to):
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 2")
    src = (
        f"read_json('{log}', format='newline_delimited', "
        "columns={ts: 'DOUBLE', id: 'VARCHAR', name: 'VARCHAR', data: 'JSON'})"
    )
    if report == "connectivity":
        sql = f"""
        WITH raw AS (
          SELECT ts, id, name, row_number() OVER () AS seq FROM {src}
          WHERE ts <= {t_to}),
        devices AS (SELECT DISTINCT id FROM raw WHERE NOT starts_with(name, 'rollout.')),
        ev AS (
          SELECT ts, id, name, seq,
                 lag(name) OVER (PARTITION BY id ORDER BY ts, seq) AS prev
          FROM raw WHERE name IN ('online', 'offline', 'deleted')),
        tr AS (
          SELECT ts, id, name, seq, name = 'online' AS is_start FROM ev
          WHERE (name = 'online' AND (prev IS NULL OR prev <> 'online'))
             OR (name <> 'online' AND prev = 'online')),
        paired AS (
          SELECT id, ts AS s, is_start,
                 coalesce(lead(ts) OVER (PARTITION BY id ORDER BY ts, seq), {t_to}) AS e,
                 name
          FROM tr),
        starts AS (SELECT * FROM paired WHERE is_start),
        peak AS (
          SELECT id, max(n) AS peak FROM (
            SELECT id, count(*) OVER (PARTITION BY id ORDER BY s
                   RANGE BETWEEN CURRENT ROW AND {WINDOW_S} FOLLOWING) AS n
            FROM starts WHERE s >= {t_from} AND s <= {t_to}) GROUP BY id),
        agg AS (
          SELECT id,
            count(*) FILTER (WHERE s <= {t_to} AND e >= {t_from}) AS sessions,
            coalesce(sum(greatest(0, least(e, {t_to}) - greatest(s, {t_from})))
                     FILTER (WHERE s <= {t_to} AND e >= {t_from}), 0) AS online_s,
            count(*) FILTER (WHERE s >= {t_from}) AS connects
          FROM starts GROUP BY id),
        disc AS (
          SELECT id, count(*) AS disconnects FROM tr
          WHERE name = 'offline' AND ts >= {t_from} AND ts <= {t_to} GROUP BY id)
        SELECT d.id, coalesce(sessions, 0) AS sessions, coalesce(online_s, 0) AS online_s,
               coalesce(connects, 0) AS connects, coalesce(disconnects, 0) AS disconnects,
               coalesce(peak, 0) AS peak_connects
        FROM devices d LEFT JOIN agg USING (id) LEFT JOIN disc USING (id)
             LEFT JOIN peak USING (id)
        ORDER BY d.id
        """
    else:
        sql = f"""
        WITH raw AS (
          SELECT ts, id, name, data, row_number() OVER () AS seq FROM {src}
          WHERE ts <= {t_to}),
        devices AS (SELECT DISTINCT id FROM raw WHERE NOT starts_with(name, 'rollout.')),
        ev AS (
          SELECT ts, id, seq, CASE
            WHEN name = 'deleted' THEN 'deleted'
            WHEN name = 'updated' THEN json_extract(data, '$.shadow.state.reported.on')::VARCHAR
            ELSE json_extract(data, '$.state.reported.on')::VARCHAR END AS v
          FROM raw WHERE name IN ('rpc.out.Dash.Shadow.Update', 'updated', 'deleted')),
        st AS (
          SELECT *, lag(v) OVER (PARTITION BY id ORDER BY ts, seq) AS prev
          FROM ev WHERE v IN ('true', 'false', 'deleted')),
        counts AS (
          SELECT id,
            count(*) FILTER (WHERE v = 'true' AND prev = 'false'
                             AND ts >= {t_from}) AS switch_ons,
            count(*) FILTER (WHERE v = 'false' AND prev = 'true'
                             AND ts >= {t_from}) AS switch_offs
          FROM st GROUP BY id),
        tr AS (
          SELECT id, ts, seq, v = 'true' AS is_start FROM st
          WHERE (v = 'true' AND (prev IS NULL OR prev <> 'true'))
             OR (v <> 'true' AND prev = 'true')),
        periods AS (
          SELECT id, ts AS s, is_start,
                 coalesce(lead(ts) OVER (PARTITION BY id ORDER BY ts, seq), {t_to}) AS e
          FROM tr),
        hours AS (
          SELECT id, sum(greatest(0, least(e, {t_to}) - greatest(s, {t_from}))) / 3600 AS hours_on
          FROM periods WHERE is_start GROUP BY id)
        SELECT d.id, coalesce(switch_ons, 0) AS switch_ons,
               coalesce(switch_offs, 0) AS switch_offs, coalesce(hours_on, 0) AS hours_on
        FROM devices d LEFT JOIN counts USING (id) LEFT JOIN hours USING (id)
        ORDER BY d.id
        """
    result = con.execute(sql)
    names = [c[0] for c in result.description]
    return names, result.fetchall()


def polars_query(report, log, t_from, t_to):
    import polars as pl

    on = pl.Struct({"on": pl.Boolean})
    schema = {"ts": pl.Float64, "id": pl.String, "name": pl.String}
    if report == "usage":
        schema["data"] = pl.Struct(
            {
                "state": pl.Struct({"reported": on}),
                "shadow": pl.Struct({"state": pl.Struct({"reported": on})}),
            }
        )
    # ignore_errors: rollout.* events carry a text `state`, which the usage schema reads as
    # a struct; those rows are no shadow change either way.
    lf = (
        pl.scan_ndjson(log, schema=schema, ignore_errors=True)
        .with_row_index("seq")
        .filter(pl.col("ts") <= t_to)
    )
    devices = lf.filter(~pl.col("name").str.starts_with("rollout.")).select("id").unique()
    if report == "connectivity":
        ev = (
            lf.filter(pl.col("name").is_in(["online", "offline", "deleted"]))
            .sort(["id", "ts", "seq"])
            .with_columns(prev=pl.col("name").shift(1).over("id"))
        )
        tr = ev.filter(
            ((pl.col("name") == "online") & (pl.col("prev").is_null() | (pl.col("prev") != "online")))
            | ((pl.col("name") != "online") & (pl.col("prev") == "online"))
        ).with_columns(
            e=pl.col("ts").shift(-1).over("id").fill_null(t_to),
            is_start=pl.col("name") == "online",
        )
        starts = tr.filter("is_start")
        overlap = (pl.col("ts") <= t_to) & (pl.col("e") >= t_from)
        clipped = (pl.min_horizontal("e", pl.lit(t_to)) - pl.max_horizontal("ts", pl.lit(t_from))).clip(0)
        agg = starts.group_by("id").agg(
            sessions=overlap.sum(),
            online_s=pl.when(overlap).then(clipped).otherwise(0.0).sum(),
            connects=(pl.col("ts") >= t_from).sum(),
        )
        in_range = starts.filter(pl.col("ts") >= t_from).sort(["id", "ts"])
        peak = (
            in_range.join(in_range.select(["id", pl.col("ts").alias("t2")]), on="id")
            .filter((pl.col("t2") >= pl.col("ts")) & (pl.col("t2") <= pl.col("ts") + WINDOW_S))
            .group_by(["id", "ts"])
            .agg(n=pl.len())
            .group_by("id")
            .agg(peak_connects=pl.col("n").max())
        )
        disc = (
            tr.filter((pl.col("name") == "offline") & (pl.col("ts") >= t_from))
            .group_by("id")
            .agg(disconnects=pl.len())
        )
        out = (
            devices.join(agg, on="id", how="left")
            .join(disc, on="id", how="left")
            .join(peak, on="id", how="left")
            .select(
                "id",
                pl.col("sessions").fill_null(0),
                pl.col("online_s").fill_null(0.0),
                pl.col("connects").fill_null(0),
                pl.col("disconnects").fill_null(0),
                pl.col("peak_connects").fill_null(0),
            )
            .sort("id")
        )
    else:
        value = (
            pl.when(pl.col("name") == "deleted")
            .then(pl.lit("deleted"))
            .when(pl.col("name") == "updated")
            .then(pl.col("data").struct.field("shadow").struct.field("state").struct.field("reported").struct.field("on").cast(pl.String))
            .otherwise(pl.col("data").struct.field("state").struct.field("reported").struct.field("on").cast(pl.String))
        )
        st = (
            lf.filter(pl.col("name").is_in(["rpc.out.Dash.Shadow.Update", "updated", "deleted"]))
            .with_columns(v=value)
            .filter(pl.col("v").is_not_null())
            .sort(["id", "ts", "seq"])
            .with_columns(prev=pl.col("v").shift(1).over("id"))
        )
        counts = st.group_by("id").agg(
            switch_ons=((pl.col("v") == "true") & (pl.col("prev") == "false") & (pl.col("ts") >= t_from)).sum(),
            switch_offs=((pl.col("v") == "false") & (pl.col("prev") == "true") & (pl.col("ts") >= t_from)).sum(),
        )
        tr = st.filter(
            ((pl.col("v") == "true") & (pl.col("prev").is_null() | (pl.col("prev") != "true")))
            | ((pl.col("v") != "true") & (pl.col("prev") == "true"))
        ).with_columns(e=pl.col("ts").shift(-1).over("id").fill_null(t_to), is_start=pl.col("v") == "true")
        clipped = (pl.min_horizontal("e", pl.lit(t_to)) - pl.max_horizontal("ts", pl.lit(t_from))).clip(0)
        hours = tr.filter("is_start").group_by("id").agg(hours_on=clipped.sum() / 3600)
        out = (
            devices.join(counts, on="id", how="left")
            .join(hours, on="id", how="left")
            .select(
                "id",
                pl.col("switch_ons").fill_null(0),
                pl.col("switch_offs").fill_null(0),
                pl.col("hours_on").fill_null(0.0),
            )
            .sort("id")
        )
    df = out.collect()
    return df.columns, df.rows()


def jq_query(report, log, t_from, t_to):
    """jq extracts the fields; a plain Python pass runs the state machine."""
    if report == "connectivity":
        program = '[.ts, .id, .name] | @tsv'
    else:
        program = (
            '[.ts, .id, .name, (if .name == "updated" then .data.shadow.state.reported.on '
            'elif .name == "rpc.out.Dash.Shadow.Update" then .data.state.reported.on '
            'else null end)] | @tsv'
        )
    proc = subprocess.Popen(["jq", "-r", program, log], stdout=subprocess.PIPE, text=True, bufsize=1 << 20)
    events = {}
    seen = set()
    seq = 0
    wanted = {"online", "offline", "deleted"} if report == "connectivity" else {
        "rpc.out.Dash.Shadow.Update", "updated", "deleted"}
    for line in proc.stdout:
        parts = line.rstrip("\n").split("\t")
        ts = float(parts[0])
        if ts > t_to:
            continue
        if not parts[2].startswith("rollout."):
            seen.add(parts[1])
        if parts[2] in wanted:
            seq += 1
            value = parts[2] if report == "connectivity" or parts[2] == "deleted" else parts[3]
            events.setdefault(parts[1], []).append((ts, seq, value))
    proc.wait()
    rows = []
    for device in sorted(seen):
        evs = sorted(events.get(device, []))
        if report == "connectivity":
            rows.append((device,) + connectivity_row(evs, t_from, t_to))
        else:
            rows.append((device,) + usage_row(evs, t_from, t_to))
    names = (["id", "sessions", "online_s", "connects", "disconnects", "peak_connects"]
             if report == "connectivity" else ["id", "switch_ons", "switch_offs", "hours_on"])
    return names, rows


def connectivity_row(evs, t_from, t_to):
    since, spans, connects, disconnects = None, [], [], 0
    for ts, _, name in evs:
        if name == "online":
            if since is None:
                since = ts
                connects.append(ts)
        elif since is not None:
            spans.append((since, ts))
            since = None
            if name == "offline" and t_from <= ts <= t_to:
                disconnects += 1
    if since is not None:
        spans.append((since, max(t_to, since)))
    sessions = [(s, e) for s, e in spans if s <= t_to and e >= t_from]
    online = sum(max(0.0, min(e, t_to) - max(s, t_from)) for s, e in sessions)
    connects = [t for t in connects if t_from <= t <= t_to]
    peak, first = 0, 0
    for last, t in enumerate(connects):
        while t - connects[first] > WINDOW_S:
            first += 1
        peak = max(peak, last + 1 - first)
    return (len(sessions), online, len(connects), disconnects, peak)


def usage_row(evs, t_from, t_to):
    state, since, ons, offs, total = None, None, 0, 0, 0.0
    for ts, _, v in evs:
        if v == "deleted":
            if since is not None:
                total += max(0.0, min(ts, t_to) - max(since, t_from))
                since = None
            state = None
            continue
        if v not in ("true", "false"):
            continue
        on = v == "true"
        if state is False and on and ts >= t_from:
            ons += 1
        if state is True and not on and ts >= t_from:
            offs += 1
        if on and since is None:
            since = ts
        if not on and since is not None:
            total += max(0.0, min(ts, t_to) - max(since, t_from))
            since = None
        state = on
    if since is not None:
        total += max(0.0, t_to - max(since, t_from))
    return (ons, offs, total / 3600)


ENGINES = {"duckdb": duckdb_query, "polars": polars_query, "jq": jq_query}


def run_engine(engine, report, log, t_from, t_to, out):
    names, rows = ENGINES[engine](report, log, float(t_from), float(t_to))
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows(rows)


# --- driver ---------------------------------------------------------------------------


def timed(cmd):
    """Wall seconds and peak RSS (MiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024, err


COLUMNS = {
    "connectivity": ["id", "sessions", "online_s", "connects", "disconnects", "peak_connects"],
    "usage": ["id", "switch_ons", "switch_offs", "hours_on"],
}


def load(path, columns):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [[r[c] for c in columns] for r in rows]


def same(a, b):
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} rows"
    for ra, rb in zip(a, b):
        for x, y in zip(ra, rb):
            try:
                fx, fy = float(x), float(y)
                if not math.isclose(fx, fy, rel_tol=1e-9, abs_tol=1e-5):
                    return f"{ra} vs {rb}"
            except ValueError:
                if x != y:
                    return f"{ra} vs {rb}"
    return None


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        run_engine(*sys.argv[2:8])
        return
    log, bench_bin, work = sys.argv[1], sys.argv[2], sys.argv[3]
    engines = sys.argv[4].split(",") if len(sys.argv) > 4 else ["duckdb", "polars", "jq"]
    repeats = int(os.environ.get("REPEATS", "3"))
    size = os.path.getsize(log)
    # The range every engine uses: the log's own, as herd-analytics reports it.
    probe = os.path.join(work, "range.json")
    timed([bench_bin, "connectivity", "--log", log, "--format", "json", "--out", probe])
    with open(probe) as f:
        doc = json.load(f)
    t_from, t_to = repr(doc["from"]), repr(doc["to"])
    results = []
    for report in ("connectivity", "usage"):
        ours = os.path.join(work, f"herd-{report}.csv")
        runs = []
        for _ in range(repeats):
            wall, rss, err = timed([bench_bin, report, "--log", log, "--from", t_from, "--to", t_to,
                                    "--format", "csv", "--table", "devices", "--out", ours])
            runs.append((wall, rss))
        best = min(runs)
        results.append((report, "herd-analytics", best[0], max(r[1] for r in runs), "reference", err.strip()))
        reference = load(ours, COLUMNS[report])
        for engine in engines:
            out = os.path.join(work, f"{engine}-{report}.csv")
            try:
                wall, rss, _ = timed([sys.executable, __file__, "run", engine, report, log, t_from, t_to, out])
                diff = same(reference, load(out, COLUMNS[report]))
                verdict = "identical" if diff is None else f"DIFFERENT: {diff}"
            except Exception as e:  # an engine failing is a result, not a crash
                wall, rss, verdict = float("nan"), float("nan"), f"failed: {e}"[:300]
            results.append((report, engine, wall, rss, verdict, ""))
    print(f"log: {log} ({size / 2**30:.2f} GiB), range {t_from} .. {t_to}, {os.cpu_count()} cores")
    print()
    print("| report | engine | wall s | peak RSS MiB | vs herd | results |")
    print("|---|---|---:|---:|---:|---|")
    base = {r[0]: r[2] for r in results if r[1] == "herd-analytics"}
    for report, engine, wall, rss, verdict, _ in results:
        ratio = wall / base[report] if base[report] and not math.isnan(wall) else float("nan")
        print(f"| {report} | {engine} | {wall:.2f} | {rss:.0f} | {ratio:.1f}x | {verdict} |")
    for report, engine, _, _, _, err in results:
        if err:
            print(f"\n{report} (herd-analytics, in-process): {err}")


if __name__ == "__main__":
    main()
