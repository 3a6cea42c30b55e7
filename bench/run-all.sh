#!/usr/bin/env bash
# Builds herd-server and herd-bench and measures herd-server, the tokio-tungstenite echo
# peer and mosquitto in one run. mosquitto comes from Debian's package
# (`apt-get install -y mosquitto`, 2.0.11 on Debian 12); this script installs it when it
# is missing and it runs as root. Without it the mosquitto column reads "not run".
# Extra arguments go to herd-bench, e.g. `bench/run-all.sh --devices 4000 --duration 10s`.
set -euo pipefail
cd "$(dirname "$0")/.."

mosquitto_found() {
    command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]
}
if ! mosquitto_found && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto
fi
# The package enables a system broker on port 1883 where systemd runs; herd-bench starts
# its own on a free port, so the two do not meet.

cargo build --release -p herd-server -p herd-bench
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/herd-bench" --targets all --markdown "$@"
