#!/usr/bin/env bash
# Data-plane benchmark (issue 2, "Benchmark"): on one two-namespace lab (a veth
# pair on the simulated internet 192.0.2.0/24, overlay 100.64.0.0/24), measure
#   - single-stream and 4-stream TCP throughput (iperf3),
#   - the loss-free UDP rate (highest offered rate with < 0.5 % loss, 1400-byte
#     IP packets, found by a bounded bisection),
#   - ping RTT (median of the individual replies), idle and under a single
#     TCP stream,
#   - the CPU time of the implementation's processes on both sides during the
#     single-stream run (utime+stime from /proc/PID/stat): busy cores, and
#     throughput per busy core,
# for the raw veth pair, wireguard-go, boringtun-cli (1 thread and N threads)
# and `weft wg`; the same implementation runs on both sides. Repetitions are
# interleaved (rep 1 of every implementation, then rep 2, ...) so background
# noise spreads evenly; the table has medians and ratios. Everything it creates
# is removed on exit, on error and on Ctrl-C.
#
# Knobs (environment):
#   REPS=3            repetitions per implementation (medians are reported)
#   DURATION=5        seconds per TCP run (the first second is omitted, iperf3 -O 1)
#   UDP_DURATION=3    seconds per UDP probe
#   UDP_STEPS=4       bisection steps of the loss-free UDP search (resolution 1/2^N)
#   UDP_WINDOW=4M     iperf3 -w (socket buffers of the iperf3 ends) for the UDP runs
#   BT_THREADS=$(nproc)  thread count of the "N threads" boringtun-cli run
#   IMPLS="raw wireguard-go boringtun-1 boringtun-N weft"   what to measure;
#                     add "weft-filter" for weft with a policy's stateful inbound
#                     filter in force (default deny, 32 rules; the cost of policy);
#                     add "weft-metrics" for weft with --metrics-listen (the per-path
#                     counters on) scraped every SCRAPE_EVERY seconds on both sides
#                     during the run (the cost of metrics: plain "weft" runs with
#                     them off)
#   SCRAPE_EVERY=1    seconds between the weft-metrics scrapes (Prometheus' default is 15)
#   BORINGTUN_ROOT=target/bench-tools   where `cargo install boringtun-cli` goes
#   WEFT_BIN=         use this weft binary instead of `cargo build --release -p weft`
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

if [ "$(id -u)" != 0 ]; then echo "run as root (network namespaces and TUN need it)" >&2; exit 1; fi

REPS="${REPS:-3}"
DURATION="${DURATION:-5}"
UDP_DURATION="${UDP_DURATION:-3}"
UDP_STEPS="${UDP_STEPS:-4}"
BT_THREADS="${BT_THREADS:-$(nproc)}"
IMPLS="${IMPLS:-raw wireguard-go boringtun-1 boringtun-N weft}"
BORINGTUN_ROOT="${BORINGTUN_ROOT:-$REPO/target/bench-tools}"
UDP_LEN=1372            # UDP payload: 1372 + 8 + 20 = 1400-byte IP packets, under the 1420 overlay MTU
LOSS_MAX=0.5            # percent
SCRAPE_EVERY="${SCRAPE_EVERY:-1}"
UDP_WINDOW="${UDP_WINDOW:-4M}"   # iperf3 -w for UDP: socket buffers that absorb scheduling hiccups of the iperf3 ends

# --- tools -------------------------------------------------------------------
need=()
for pair in iperf3:iperf3 wireguard-go:wireguard-go wg:wireguard-tools ip:iproute2 ping:iputils-ping python3:python3 curl:curl; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "== apt-get install ${need[*]}"
  apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

BORINGTUN="$(command -v boringtun-cli || true)"
if [ -z "$BORINGTUN" ] && [ -x "$BORINGTUN_ROOT/bin/boringtun-cli" ]; then BORINGTUN="$BORINGTUN_ROOT/bin/boringtun-cli"; fi
case " $IMPLS " in *" boringtun-"*)
  if [ -z "$BORINGTUN" ]; then
    echo "== cargo install --locked boringtun-cli --root $BORINGTUN_ROOT"
    cargo install --locked -q boringtun-cli --root "$BORINGTUN_ROOT"
    BORINGTUN="$BORINGTUN_ROOT/bin/boringtun-cli"
  fi;;
esac

if [ -n "${WEFT_BIN:-}" ]; then
  WEFT="$WEFT_BIN"
else
  case " $IMPLS " in *" weft "*|*" weft-filter "*|*" weft-metrics "*)
    echo "== cargo build --release -p weft"
    cargo build --release -q -p weft;;
  esac
  WEFT="${CARGO_TARGET_DIR:-$REPO/target}/release/weft"
fi

# --- lab ---------------------------------------------------------------------
tag="wb$$"
A="${tag}a"; B="${tag}b"
WORK="/tmp/$tag"
pids=()      # every long-running process this script started
ifaces=()    # every WireGuard interface name it used (for socket clean-up)
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  for i in "${ifaces[@]}"; do rm -f "/var/run/wireguard/$i.sock"; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$A"; ip netns add "$B"
ip link add "${tag}x" netns "$A" type veth peer name "${tag}y" netns "$B"
ip -n "$A" addr add 192.0.2.1/24 dev "${tag}x"; ip -n "$A" link set "${tag}x" up; ip -n "$A" link set lo up
ip -n "$B" addr add 192.0.2.2/24 dev "${tag}y"; ip -n "$B" link set "${tag}y" up; ip -n "$B" link set lo up

umask 077; mkdir -p "$WORK"
wg genkey > "$WORK/a.key"; wg genkey > "$WORK/b.key"
PA=$(wg pubkey < "$WORK/a.key"); PB=$(wg pubkey < "$WORK/b.key")
RESULTS="$WORK/results.tsv"; : > "$RESULTS"

# Kill one process we started and wait for it (SIGTERM, then SIGKILL after 5 s).
stop_pid() {
  local p="$1" n
  kill "$p" 2>/dev/null || return 0
  for n in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  local keep=(); for q in "${pids[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done; pids=("${keep[@]}")
}

# The filter of "weft-filter": default deny; 30 rules about other addresses
# and ports (so a new flow is checked against all of them), then an allow
# for the tunnel's /24. Established flows pass through the flow table.
write_filter() {
  python3 - "$WORK/filter.json" <<'PY'
import json, sys
rules = []
for i in range(30):
    rules.append({"a": "deny" if i % 3 == 0 else "allow", "s": [f"100.64.{100 + i}.0/24"],
                  "d": ["100.64.0.0/24"], "p": "tcp", "r": {"l": 10000 + i, "h": 10000 + i}, "o": i + 1})
for n, p in enumerate(("tcp", "udp")):
    rules.append({"a": "allow", "s": ["100.64.0.0/24"], "d": ["100.64.0.0/24"], "p": p,
                  "r": {"l": 1, "h": 65535}, "o": 31 + n})
rules.append({"a": "allow", "s": ["100.64.0.0/24"], "d": ["100.64.0.0/24"], "p": "icmp",
              "r": {"l": 0, "h": 65535}, "o": 33})
json.dump({"r": rules, "d": "deny"}, open(sys.argv[1], "w"))
PY
}

# Start implementation $1 on both sides as interfaces $2 (in A) and $3 (in B).
# Sets DPIDS. Returns non-zero if the interfaces never come up.
start_impl() {
  local impl="$1" ia="$2" ib="$3" ns i log
  DPIDS=()
  for side in a b; do
    if [ $side = a ]; then ns="$A"; i="$ia"; else ns="$B"; i="$ib"; fi
    log="$WORK/$i.log"
    case "$impl" in
      weft)         ip netns exec "$ns" "$WEFT" wg "$i" 2>"$log" >&2 & ;;
      weft-filter)  ip netns exec "$ns" "$WEFT" wg "$i" --filter-json "$WORK/filter.json" 2>"$log" >&2 & ;;
      weft-metrics) ip netns exec "$ns" "$WEFT" wg "$i" --metrics-listen 127.0.0.1:9586 2>"$log" >&2 & ;;
      wireguard-go) WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 LOG_LEVEL=error \
                      ip netns exec "$ns" wireguard-go -f "$i" >"$log" 2>&1 & ;;
      boringtun-1)  ip netns exec "$ns" "$BORINGTUN" "$i" --foreground --disable-drop-privileges \
                      --threads 1 --verbosity error >"$log" 2>&1 & ;;
      boringtun-N)  ip netns exec "$ns" "$BORINGTUN" "$i" --foreground --disable-drop-privileges \
                      --threads "$BT_THREADS" --verbosity error >"$log" 2>&1 & ;;
    esac
    pids+=($!); DPIDS+=($!)
  done
  for i in "$ia" "$ib"; do
    for _ in $(seq 100); do [ -S "/var/run/wireguard/$i.sock" ] && break; sleep 0.1; done
    [ -S "/var/run/wireguard/$i.sock" ] || { echo "   $impl: no UAPI socket for $i (log: $(tail -c 300 "$WORK/$i.log"))" >&2; return 1; }
  done
  wg set "$ia" private-key "$WORK/a.key" listen-port 51820 \
    peer "$PB" endpoint 192.0.2.2:51820 allowed-ips 100.64.0.2/32
  wg set "$ib" private-key "$WORK/b.key" listen-port 51820 \
    peer "$PA" endpoint 192.0.2.1:51820 allowed-ips 100.64.0.1/32
  ip -n "$A" link set "$ia" mtu 1420; ip -n "$B" link set "$ib" mtu 1420
  ip -n "$A" addr add 100.64.0.1/24 dev "$ia"; ip -n "$A" link set "$ia" up
  ip -n "$B" addr add 100.64.0.2/24 dev "$ib"; ip -n "$B" link set "$ib" up
  for _ in $(seq 20); do
    if ip netns exec "$A" ping -c 1 -W 1 -q 100.64.0.2 >/dev/null 2>&1; then
      [ "$impl" = weft-metrics ] && start_scraper
      return 0
    fi
  done
  echo "   $impl: no ping across the tunnel" >&2; return 1
}

# weft-metrics: scrape both sides every second (what a Prometheus server at a
# 1 s interval would cost), until stop_impl. A failed scrape ends the run.
SCRAPER=""
start_scraper() {
  local ns
  for ns in "$A" "$B"; do
    ip netns exec "$ns" curl -fsS -o /dev/null http://127.0.0.1:9586/metrics ||
      { echo "   weft-metrics: no metrics on $ns" >&2; return 1; }
  done
  ( while :; do
      for ns in "$A" "$B"; do ip netns exec "$ns" curl -fsS -o /dev/null http://127.0.0.1:9586/metrics || true; done
      sleep "$SCRAPE_EVERY"
    done ) &
  SCRAPER=$!; pids+=("$SCRAPER")
}

stop_impl() {
  local p
  if [ -n "$SCRAPER" ]; then stop_pid "$SCRAPER"; SCRAPER=""; fi
  for p in "${DPIDS[@]}"; do stop_pid "$p"; done
  ip -n "$A" link del "$1" 2>/dev/null || true
  ip -n "$B" link del "$2" 2>/dev/null || true
  rm -f "/var/run/wireguard/$1.sock" "/var/run/wireguard/$2.sock"
}

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$RESULTS"; }

# json FILE EXPR: evaluate a python expression over the iperf3 JSON `j`; empty on error.
json() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null || true; }

iperf() { # out-file, iperf3 client args...
  local out="$1"; shift
  timeout $((DURATION + UDP_DURATION + 20)) ip netns exec "$A" iperf3 -c "$DST" -J "$@" > "$out" 2>/dev/null || true
}

ping_med() { # ping args... -> median RTT of the replies in ms (empty if none)
  ip netns exec "$A" ping -n "$@" "$DST" 2>/dev/null | sed -n 's/.* time=\([0-9.]*\) ms.*/\1/p' |
    python3 -c 'import sys, statistics; xs = [float(l) for l in sys.stdin if l.strip()]; print(f"{statistics.median(xs):.3f}" if xs else "")'
}

# CPU time (utime+stime, clock ticks) of the daemons in DPIDS, all threads;
# 0 when there are none (raw veth).
cpu_ticks() {
  local p t=0
  for p in "${DPIDS[@]}"; do
    t=$((t + $(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{s = $12 + $13} END {print s + 0}')))
  done
  echo "$t"
}
CLK_TCK=$(getconf CLK_TCK)

# Highest offered UDP rate with < LOSS_MAX % loss; prints the received rate at
# that offer in Gbit/s (0 if even the lowest offer lost packets). One unlimited
# probe sets the upper bound; then the bound itself, halvings until an offer
# passes (at most 5), and UDP_STEPS bisection steps between the passing and the
# failing offer: at most UDP_STEPS+7 runs of UDP_DURATION seconds.
udp_lossfree() {
  local f="$WORK/udp.json" hi lo mid best=0 rate loss n
  iperf "$f" -u -b 0 -l "$UDP_LEN" -w "$UDP_WINDOW" -t "$UDP_DURATION"
  hi=$(json "$f" "int(j['end']['sum_received']['bits_per_second'])")
  [ -n "$hi" ] && [ "$hi" -gt 0 ] || { echo ""; return; }
  try() { # rate -> sets rate/loss of the run; success if loss < LOSS_MAX
    iperf "$f" -u -b "$1" -l "$UDP_LEN" -w "$UDP_WINDOW" -t "$UDP_DURATION"
    loss=$(json "$f" "j['end']['sum_received']['lost_percent']")
    rate=$(json "$f" "j['end']['sum_received']['bits_per_second']/1e9")
    [ -n "$loss" ] && python3 -c "import sys; sys.exit(0 if $loss < $LOSS_MAX else 1)"
  }
  if try "$hi"; then echo "$rate"; return; fi
  lo=$hi
  for n in 1 2 3 4 5; do
    hi=$lo; lo=$((lo / 2))
    if try "$lo"; then best=$rate; break; fi
    [ "$n" = 5 ] && { echo 0; return; }
  done
  for n in $(seq "$UDP_STEPS"); do
    mid=$(( (lo + hi) / 2 ))
    if try "$mid"; then lo=$mid; best=$rate; else hi=$mid; fi
  done
  echo "$best"
}

measure() { # impl rep dst
  local impl="$1" rep="$2" f="$WORK/tcp.json" v load
  DST="$3"
  ip netns exec "$B" iperf3 -s >/dev/null 2>&1 & local srv=$!; pids+=($srv)
  for _ in $(seq 50); do ip netns exec "$B" ss -ltn 2>/dev/null | grep -q ':5201 ' && break; sleep 0.1; done

  v=$(ping_med -c 40 -i 0.05); record "$impl" "$rep" ping_idle "$v"

  # Single stream, with a ping running alongside (from second 1 to second
  # DURATION-1, 20 a second) and the daemons' CPU time sampled over the
  # measured part (from second 1.5 to second DURATION-0.5).
  local span=$(( DURATION > 2 ? DURATION - 2 : 1 ))
  ( sleep 1; ping_med -c $(( span * 20 )) -i 0.05 > "$WORK/load.ping" ) & local pp=$!
  ( sleep 1.5; c0=$(cpu_ticks); t0=$(date +%s.%N); sleep "$span"; c1=$(cpu_ticks); t1=$(date +%s.%N)
    python3 -c "import sys; c0, c1, t0, t1, hz = map(float, sys.argv[1:]); print((c1 - c0) / hz / (t1 - t0))" \
      "$c0" "$c1" "$t0" "$t1" "$CLK_TCK" > "$WORK/load.cpu" ) & local cp=$!
  iperf "$f" -O 1 -t "$DURATION"
  wait "$pp" 2>/dev/null || true
  wait "$cp" 2>/dev/null || true
  v=$(json "$f" "j['end']['sum_received']['bits_per_second']/1e9"); record "$impl" "$rep" tcp1 "$v"
  load=$(cat "$WORK/load.ping" 2>/dev/null || true); record "$impl" "$rep" ping_load "$load"
  if [ "${#DPIDS[@]}" -gt 0 ]; then
    busy=$(cat "$WORK/load.cpu" 2>/dev/null || true); record "$impl" "$rep" cores "$busy"
    if [ -n "$v" ] && [ -n "$busy" ]; then
      record "$impl" "$rep" percore "$(python3 -c "import sys; b = float(sys.argv[2]); print(float(sys.argv[1]) / b if b > 0 else '')" "$v" "$busy")"
    fi
  fi

  iperf "$f" -O 1 -t "$DURATION" -P 4
  v=$(json "$f" "j['end']['sum_received']['bits_per_second']/1e9"); record "$impl" "$rep" tcp4 "$v"

  v=$(udp_lossfree); record "$impl" "$rep" udp "$v"
  stop_pid "$srv"
  printf '   %-13s rep %s: tcp1 %s  tcp4 %s  udp %s Gbit/s  ping %s / %s ms  busy cores %s\n' "$impl" "$rep" \
    "$(awk -F'\t' -v i="$impl" -v r="$rep" '$1==i&&$2==r&&$3=="tcp1"{printf "%.2f",$4}' "$RESULTS")" \
    "$(awk -F'\t' -v i="$impl" -v r="$rep" '$1==i&&$2==r&&$3=="tcp4"{printf "%.2f",$4}' "$RESULTS")" \
    "$(awk -F'\t' -v i="$impl" -v r="$rep" '$1==i&&$2==r&&$3=="udp"{printf "%.2f",$4}' "$RESULTS")" \
    "$(awk -F'\t' -v i="$impl" -v r="$rep" '$1==i&&$2==r&&$3=="ping_idle"{print $4}' "$RESULTS")" \
    "$(awk -F'\t' -v i="$impl" -v r="$rep" '$1==i&&$2==r&&$3=="ping_load"{print $4}' "$RESULTS")" \
    "$(awk -F'\t' -v i="$impl" -v r="$rep" '$1==i&&$2==r&&$3=="cores"{printf "%.2f",$4}' "$RESULTS")" >&2
}

# --- run ---------------------------------------------------------------------
echo "== weft data-plane benchmark: REPS=$REPS DURATION=${DURATION}s UDP_DURATION=${UDP_DURATION}s BT_THREADS=$BT_THREADS" >&2
k=0
case " $IMPLS " in *" weft-filter "*) write_filter;; esac
for rep in $(seq "$REPS"); do
  for impl in $IMPLS; do
    if [ "$impl" = raw ]; then DPIDS=(); measure raw "$rep" 192.0.2.2; continue; fi
    k=$((k + 1)); ia="${tag}i${k}a"; ib="${tag}i${k}b"; ifaces+=("$ia" "$ib")
    if start_impl "$impl" "$ia" "$ib"; then measure "$impl" "$rep" 100.64.0.2; fi
    stop_impl "$ia" "$ib"
  done
done

# --- report ------------------------------------------------------------------
{
  echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "Machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) CPUs, kernel $(uname -r)"
  echo "Versions: weft $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" status --porcelain -- Cargo.lock cli mesh proto 2>/dev/null | grep -q . && echo ' +uncommitted changes'), $(wireguard-go --version 2>/dev/null | head -1),"\
       "boringtun-cli $("$BORINGTUN" --version 2>/dev/null | awk '{print $2}' || echo '?'), iperf $(iperf3 --version | awk 'NR==1{print $2}')"
  echo "Settings: SCRAPE_EVERY=${SCRAPE_EVERY}s (weft-metrics), REPS=$REPS, TCP ${DURATION}s (first second omitted), UDP ${UDP_DURATION}s probes of 1400-byte packets (loss < ${LOSS_MAX}%, iperf3 -w $UDP_WINDOW), overlay MTU 1420, boringtun-cli N=$BT_THREADS"
  echo
} > "$WORK/report.md"
python3 - "$RESULTS" "$BT_THREADS" "$IMPLS" >> "$WORK/report.md" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
bt_n, impls = sys.argv[2], sys.argv[3].split()
vals = {}
for impl, rep, metric, v in rows:
    try: vals.setdefault((impl, metric), []).append(float(v))
    except ValueError: pass
def med(impl, m):
    xs = vals.get((impl, m)); return statistics.median(xs) if xs else None
names = {"raw": "raw veth", "wireguard-go": "wireguard-go", "boringtun-1": "boringtun-cli, 1 thread",
         "boringtun-N": f"boringtun-cli, {bt_n} threads", "weft": "weft",
         "weft-filter": "weft, policy filter in force",
         "weft-metrics": "weft, metrics on and scraped"}
metrics = [("tcp1", "TCP 1 stream (Gbit/s)", "{:.2f}"), ("tcp4", "TCP 4 streams (Gbit/s)", "{:.2f}"),
           ("udp", "UDP loss-free (Gbit/s)", "{:.2f}"), ("ping_idle", "ping idle (ms)", "{:.3f}"),
           ("ping_load", "ping under 1 TCP stream (ms)", "{:.3f}"),
           ("cores", "busy cores, 1 stream", "{:.2f}"), ("percore", "Gbit/s per busy core, 1 stream", "{:.2f}")]
def cell(v, fmt): return "n/a" if v is None else fmt.format(v)
print("| | " + " | ".join(h for _, h, _ in metrics) + " |")
print("|---" * (len(metrics) + 1) + "|")
for i in impls:
    print(f"| {names.get(i, i)} | " + " | ".join(cell(med(i, m), f) for m, _, f in metrics) + " |")
def best_bt(m):
    # the better boringtun-cli thread setting, per metric (higher throughput, lower RTT)
    xs = [v for v in (med("boringtun-1", m), med("boringtun-N", m)) if v is not None]
    if not xs: return None
    return min(xs) if m.startswith("ping") or m == "cores" else max(xs)
def ratio(a, b): return None if a is None or b in (None, 0) else a / b
refs = [("weft / wireguard-go", lambda m: med("wireguard-go", m)),
        ("weft / boringtun-cli (better thread setting)", best_bt),
        ("weft / raw veth", lambda m: med("raw", m))]
for label, ref in refs:
    print(f"| *{label}* | " + " | ".join(cell(ratio(med("weft", m), ref(m)), "{:.2f}") for m, _, _ in metrics) + " |")
if "weft-filter" in impls:
    print("| *weft with filter / weft* | " + " | ".join(cell(ratio(med("weft-filter", m), med("weft", m)), "{:.2f}") for m, _, _ in metrics) + " |")
if "weft-metrics" in impls:
    print("| *weft with metrics / weft* | " + " | ".join(cell(ratio(med("weft-metrics", m), med("weft", m)), "{:.3f}") for m, _, _ in metrics) + " |")
print()
w = med("weft", "tcp1")
others = {n: med(n, "tcp1") for n in ("wireguard-go", "boringtun-1", "boringtun-N")}
known = {n: v for n, v in others.items() if v is not None}
if w is None or not known:
    print("Bar (weft single-stream TCP >= max(wireguard-go, boringtun-cli 1 thread, boringtun-cli N threads)): NOT EVALUATED (missing results)")
else:
    best = max(known, key=known.get)
    ok = w >= known[best]
    print(f"Bar (weft single-stream TCP >= max(wireguard-go, boringtun-cli 1 thread, boringtun-cli N threads)): "
          f"{'MET' if ok else 'NOT MET'}: weft {w:.2f} Gbit/s vs {names[best]} {known[best]:.2f} Gbit/s")
# Issue 7: weft at least 2x the fastest other on single-stream TCP, 4-stream
# TCP and the loss-free UDP rate; ping under load no worse than any other.
others = ("wireguard-go", "boringtun-1", "boringtun-N")
checks = []
for m, label in (("tcp1", "TCP 1 stream"), ("tcp4", "TCP 4 streams"), ("udp", "UDP loss-free")):
    known = {n: med(n, m) for n in others if med(n, m) is not None}
    w = med("weft", m)
    if w is None or not known:
        checks.append((None, f"{label}: n/a")); continue
    best = max(known, key=known.get)
    checks.append((w >= 2 * known[best], f"{label} {w:.2f} vs 2 x {known[best]:.2f} ({names[best]}) = {w / known[best]:.2f}x"))
known = {n: med(n, "ping_load") for n in others if med(n, "ping_load") is not None}
w = med("weft", "ping_load")
if w is None or not known:
    checks.append((None, "ping under load: n/a"))
else:
    best = min(known, key=known.get)
    checks.append((w <= known[best], f"ping under load {w:.3f} ms vs {known[best]:.3f} ms ({names[best]})"))
def mark(ok): return "n/a" if ok is None else ("met" if ok else "NOT met")
overall = "NOT EVALUATED" if any(ok is None for ok, _ in checks) else ("MET" if all(ok for ok, _ in checks) else "NOT MET")
print(f"Issue 7 bar (>= 2x the fastest other on TCP 1/4 streams and UDP loss-free; ping under load <= the best other): {overall}")
for ok, text in checks:
    print(f"- {text}: {mark(ok)}")
print()
print("Medians of the repetitions; ratios are weft's median over the reference's median (for ping and busy cores, lower is better).")
print("Ping RTTs are the median reply of each series. Busy cores: CPU time (user+system) of the implementation's processes on both")
print("sides over wall time during the single-stream run; kernel work done in softirq or in the iperf3 processes is not included.")
PY
echo
cat "$WORK/report.md"
