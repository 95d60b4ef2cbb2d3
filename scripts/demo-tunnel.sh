#!/usr/bin/env bash
# The main job for now: two "hosts" (network namespaces joined by a veth pair
# on the simulated internet 192.0.2.0/24), each running `weft wg`, configured
# with the stock `wg` tool, pinging across the encrypted overlay 100.64.0.0/10.
# Everything it creates is removed on exit, on error and on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then echo "run as root (network namespaces and TUN need it)" >&2; exit 1; fi
command -v wg >/dev/null && command -v ping >/dev/null || { apt-get update -qq; apt-get install -y -qq wireguard-tools iproute2 iputils-ping >/dev/null; }
cargo build --release -q -p weft
WEFT="$PWD/target/release/weft"

tag="wd$$"
A="${tag}a"; B="${tag}b"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "/tmp/$tag"
}
trap cleanup EXIT INT TERM

ip netns add "$A"; ip netns add "$B"
ip link add "${tag}x" netns "$A" type veth peer name "${tag}y" netns "$B"
ip -n "$A" addr add 192.0.2.1/24 dev "${tag}x"; ip -n "$A" link set "${tag}x" up; ip -n "$A" link set lo up
ip -n "$B" addr add 192.0.2.2/24 dev "${tag}y"; ip -n "$B" link set "${tag}y" up; ip -n "$B" link set lo up

umask 077; mkdir -p "/tmp/$tag"
# Interface names are unique per run, so both UAPI sockets can live in
# /var/run/wireguard where the stock `wg` tool looks for them.
IA="${tag}a0"; IB="${tag}b0"
ip netns exec "$A" "$WEFT" wg "$IA" 2>"/tmp/$tag/a.log" & pids+=($!)
ip netns exec "$B" "$WEFT" wg "$IB" 2>"/tmp/$tag/b.log" & pids+=($!)
for i in "$IA" "$IB"; do
  for _ in $(seq 50); do [ -S "/var/run/wireguard/$i.sock" ] && break; sleep 0.1; done
done

wg genkey > "/tmp/$tag/a.key"; wg genkey > "/tmp/$tag/b.key"
pa=$(wg pubkey < "/tmp/$tag/a.key"); pb=$(wg pubkey < "/tmp/$tag/b.key")
wg set "$IA" private-key "/tmp/$tag/a.key" listen-port 51820 \
  peer "$pb" endpoint 192.0.2.2:51820 allowed-ips 100.64.0.2/32
wg set "$IB" private-key "/tmp/$tag/b.key" listen-port 51820 \
  peer "$pa" endpoint 192.0.2.1:51820 allowed-ips 100.64.0.1/32
ip -n "$A" addr add 100.64.0.1/24 dev "$IA"; ip -n "$A" link set "$IA" up
ip -n "$B" addr add 100.64.0.2/24 dev "$IB"; ip -n "$B" link set "$IB" up

echo "== ping across the tunnel (host A 100.64.0.1 -> host B 100.64.0.2)"
ip netns exec "$A" ping -c 3 -W 2 100.64.0.2
echo "== wg show $IA"
wg show "$IA"
echo "demo ok"
