#!/usr/bin/env bash
# Benchmark of the analytics reports against DuckDB, plain Polars and jq on a generated
# 1 GiB notification log. Installs what it needs (a venv with duckdb and polars from PyPI,
# jq from apt), builds the release binaries, generates the log once (seeded, outside the
# repository), and prints a Markdown table for docs/BENCHMARKS.md.
#
# Usage: analytics/bench/run.sh [BYTES (default 1G)] [ENGINES (default duckdb,polars,jq)]
# Environment: SEED (1), DEVICES (2000), REPEATS (3), WORK (target/analytics-bench).
set -euo pipefail
cd "$(dirname "$0")/../.."
BYTES=${1:-1G}
ENGINES=${2:-duckdb,polars,jq}
SEED=${SEED:-1}
DEVICES=${DEVICES:-2000}
WORK=${WORK:-$PWD/target/analytics-bench}
mkdir -p "$WORK"

# Another benchmark on this machine would skew both.
for _ in $(seq 40); do
  pgrep -x herd-bench >/dev/null || break
  echo "waiting for a running herd-bench to finish..." >&2
  sleep 30
done

if ! command -v jq >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq jq) >&2
fi
if [ ! -x "$WORK/venv/bin/python" ]; then
  python3 -m venv "$WORK/venv" >&2
fi
"$WORK/venv/bin/pip" install -q duckdb polars >&2

cargo build --release -p herd-analytics --bins >&2
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
LOG="$WORK/notification-$SEED-$DEVICES-$BYTES.log"
if [ ! -s "$LOG" ]; then
  "$BIN/herd-loggen" --seed "$SEED" --devices "$DEVICES" --bytes "$BYTES" "$LOG" >&2
fi
# Every engine reads from the page cache, not the disk.
cat "$LOG" >/dev/null

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "versions: duckdb $("$WORK/venv/bin/python" -c 'import duckdb; print(duckdb.__version__)'), polars $("$WORK/venv/bin/python" -c 'import polars; print(polars.__version__)'), $(jq --version)"
"$WORK/venv/bin/python" analytics/bench/compare.py "$LOG" "$BIN/herd-analytics-bench" "$WORK" "$ENGINES"
