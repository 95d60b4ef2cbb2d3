#!/usr/bin/env bash
# The main job: a whole weft cluster on one machine, in network namespaces.
# A coordinator on a simulated internet, three clouds (LANs behind routers)
# of two hosts each, two containers per host attached through `weft cni`;
# every host joins with one token. Shows `weft status`, ping and a TCP
# transfer across clouds, a container reaching the simulated internet
# (masqueraded), a Docker container (real dockerd, `weft docker-plugin`)
# talking to a CNI container in another cloud, checks that every container
# pair can talk, then
# tears everything down (also on error and Ctrl-C). Extra arguments go to
# weft-lab: `--keep` leaves the cluster up to explore, `--help` lists more.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then echo "run as root (network namespaces and TUN devices need it)" >&2; exit 1; fi
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v wg >/dev/null || need+=(wireguard-tools)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
command -v nft >/dev/null || need+=(nftables)
[ -x /usr/sbin/dockerd ] || need+=(docker.io)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p weft -p weft-examples
exec target/release/weft-lab --weft "$PWD/target/release/weft" "$@"
