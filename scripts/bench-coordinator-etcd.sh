#!/usr/bin/env bash
# The coordinator benchmark (coordinator/examples/bench.rs) on redb and on
# a 3-member etcd cluster side by side, in one run: starts etcd (Debian
# etcd-server) on loopback with its data in a temp dir, runs the bench for
# each size on both stores, and stops etcd on exit, error and Ctrl-C.
# Sizes are the arguments (default 1000). Figures go to coordinator/BENCH.md.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "install etcd-server (apt-get install etcd-server)" >&2; exit 1; }
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT INT TERM
cluster="m0=http://127.0.0.1:23800,m1=http://127.0.0.1:23801,m2=http://127.0.0.1:23802"
for i in 0 1 2; do
  etcd --name "m$i" --data-dir "$dir/m$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token weft-bench \
    --log-level error >"$dir/m$i.log" 2>&1 &
  pids+=("$!")
done
for _ in $(seq 50); do
  curl -fsS http://127.0.0.1:23790/health >/dev/null 2>&1 && break
  sleep 0.2
done
cargo build --release -q -p weft-coordinator --example bench
BENCH_STORES="redb etcd://127.0.0.1:23790,127.0.0.1:23791,127.0.0.1:23792" \
  target/release/examples/bench "${@:-1000}"
