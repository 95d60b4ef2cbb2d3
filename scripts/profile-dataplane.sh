#!/usr/bin/env bash
# Profile of the data plane under one iperf3 TCP stream (docs/PERF.md): the
# two-namespace lab of bench-dataplane.sh (veth on 192.0.2.0/24, overlay
# 100.64.0.0/24, MTU 1420), `weft wg` on both sides, `perf record -g` on
# both weft processes while the stream runs. Prints the throughput, the CPU
# time of each weft thread, and perf's flat profile (self time by symbol)
# and the share per thread; leaves perf.data in $OUT. Run as root.
#
# Knobs: WEFT_BIN (default: cargo build --release -p weft), DURATION=10 (s of
# iperf3), PERF_SECS=6 (s recorded, from second 2), FREQ=999 (Hz), OUT=/tmp/weft-prof,
# CALLGRAPH=fp|dwarf (dwarf unwinds Rust code without frame pointers; bigger data).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
if [ "$(id -u)" != 0 ]; then echo "run as root" >&2; exit 1; fi
DURATION="${DURATION:-10}"; PERF_SECS="${PERF_SECS:-6}"; FREQ="${FREQ:-999}"
OUT="${OUT:-/tmp/weft-prof}"; CALLGRAPH="${CALLGRAPH:-fp}"
if [ -n "${WEFT_BIN:-}" ]; then WEFT="$WEFT_BIN"; else
  cargo build --release -q -p weft; WEFT="${CARGO_TARGET_DIR:-$REPO/target}/release/weft"; fi

tag="wp$$"; A="${tag}a"; B="${tag}b"; ia="${tag}ia"; ib="${tag}ib"
mkdir -p "$OUT"; pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$A" 2>/dev/null || true; ip netns del "$B" 2>/dev/null || true
  rm -f "/var/run/wireguard/$ia.sock" "/var/run/wireguard/$ib.sock" "$OUT/a.key" "$OUT/b.key"
}
trap cleanup EXIT; trap 'exit 130' INT TERM

ip netns add "$A"; ip netns add "$B"
ip link add "${tag}x" netns "$A" type veth peer name "${tag}y" netns "$B"
ip -n "$A" addr add 192.0.2.1/24 dev "${tag}x"; ip -n "$A" link set "${tag}x" up; ip -n "$A" link set lo up
ip -n "$B" addr add 192.0.2.2/24 dev "${tag}y"; ip -n "$B" link set "${tag}y" up; ip -n "$B" link set lo up
(umask 077; wg genkey > "$OUT/a.key"; wg genkey > "$OUT/b.key")
PA=$(wg pubkey < "$OUT/a.key"); PB=$(wg pubkey < "$OUT/b.key")
ip netns exec "$A" "$WEFT" wg "$ia" 2>"$OUT/a.log" & pids+=($!); WA=$!
ip netns exec "$B" "$WEFT" wg "$ib" 2>"$OUT/b.log" & pids+=($!); WB=$!
for i in "$ia" "$ib"; do for _ in $(seq 100); do [ -S "/var/run/wireguard/$i.sock" ] && break; sleep 0.1; done; done
wg set "$ia" private-key "$OUT/a.key" listen-port 51820 peer "$PB" endpoint 192.0.2.2:51820 allowed-ips 100.64.0.2/32
wg set "$ib" private-key "$OUT/b.key" listen-port 51820 peer "$PA" endpoint 192.0.2.1:51820 allowed-ips 100.64.0.1/32
ip -n "$A" addr add 100.64.0.1/24 dev "$ia"; ip -n "$A" link set "$ia" up
ip -n "$B" addr add 100.64.0.2/24 dev "$ib"; ip -n "$B" link set "$ib" up
ip netns exec "$A" ping -c 3 -i 0.2 -q 100.64.0.2 >/dev/null

ip netns exec "$B" iperf3 -s >/dev/null 2>&1 & pids+=($!)
sleep 0.5
threads() { # pid -> "tid comm utime+stime" per thread
  for t in /proc/"$1"/task/*; do
    printf '%s %s %s\n' "${t##*/}" "$(cat "$t/comm")" "$(sed 's/.*) //' "$t/stat" | awk '{print $12 + $13}')"
  done
}
ip netns exec "$A" iperf3 -c 100.64.0.2 -t "$DURATION" -J > "$OUT/iperf.json" & ip_pid=$!
sleep 2
{ threads "$WA" | sed 's/^/A /'; threads "$WB" | sed 's/^/B /'; } > "$OUT/cpu0"
t0=$(date +%s.%N)
cg=(-g); [ "$CALLGRAPH" = dwarf ] && cg=(--call-graph dwarf,16384)
perf record -q -F "$FREQ" "${cg[@]}" -p "$WA,$WB" -o "$OUT/perf.data" -- sleep "$PERF_SECS" 2>/dev/null
{ threads "$WA" | sed 's/^/A /'; threads "$WB" | sed 's/^/B /'; } > "$OUT/cpu1"
t1=$(date +%s.%N)
wait "$ip_pid" || true

echo "== iperf3 single stream: $(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9, 2))' "$OUT/iperf.json") Gbit/s"
echo "== CPU per weft thread over ${PERF_SECS}s (share of one core)"
hz=$(getconf CLK_TCK)
join <(awk '{print $1"/"$2"/"$3, $4}' "$OUT/cpu0" | sort) <(awk '{print $1"/"$2"/"$3, $4}' "$OUT/cpu1" | sort) |
  awk -v hz="$hz" -v dt="$(python3 -c "print($t1 - $t0)")" '{c = ($3 - $2) / hz / dt; tot += c; if (c > 0.005) printf "   %-28s %5.1f %%\n", $1, 100 * c} END {printf "   %-28s %5.1f %%\n", "total (busy cores x100)", 100 * tot}'
echo "== perf: self time by thread"
perf report -i "$OUT/perf.data" --no-children --sort pid,comm --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12
echo "== perf: self time by symbol (top 40)"
perf report -i "$OUT/perf.data" --no-children --sort sym --stdio -g none --percent-limit 0.4 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
