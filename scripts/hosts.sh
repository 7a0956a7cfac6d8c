#!/usr/bin/env bash
# Hosts on one machine, for tests that cross a network: N network namespaces ("hosts") on one bridge, each with its
# own veth link, IPv6-only (fd00:7a::/64) or dual-stack (plus 198.18.7.0/24, the benchmarking range), each host's
# processes pinned to its own CPU. Needs root and iproute2 (scripts/setup.sh installs it).
#
#   scripts/hosts.sh up N [--dual-stack] [--cpus 0,1,...]  make hosts 1..N (removes any left from before)
#   scripts/hosts.sh down                                  remove every host and the bridge (safe to repeat)
#   scripts/hosts.sh exec I CMD...                         run CMD on host I, pinned to its CPU (taskset)
#   scripts/hosts.sh addr I [-4]                           host I's address (IPv6; -4: IPv4)
#   scripts/hosts.sh link I up|down                        bring host I's link up or down (as a pulled cable)
#   scripts/hosts.sh limit I RATE|off                      token-bucket limit on host I's link, both ways (tc tbf)
#   scripts/hosts.sh bytes I                               bytes host I's link received and sent: "RX TX"
#   scripts/hosts.sh status                                the hosts, their addresses and CPUs
#
# The machine itself is the client: the bridge has fd00:7a::100 (and 198.18.7.100), so a test process reaches every
# host directly. Host I has fd00:7a::I (and 198.18.7.I). This kernel has no netem: links can be limited in rate,
# not delayed. TANDEM_HOSTS_PREFIX (default "tdm") names everything, so that two harnesses can coexist.
set -euo pipefail

prefix="${TANDEM_HOSTS_PREFIX:-tdm}"
bridge="${prefix}-br"
state="/run/${prefix}-hosts"
net6="fd00:7a::"
net4="198.18.7."

die() {
  echo "hosts: $*" >&2
  exit 1
}
need_root() { [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces)"; }
host_ns() { echo "${prefix}-h$1"; }
host_link() { echo "${prefix}-v$1"; }
count() { cat "$state/count" 2>/dev/null || echo 0; }
check_host() {
  [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$(count)" ] || die "no host $1 (hosts: 1..$(count))"
}

down() {
  need_root
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${prefix}-h[0-9]+$" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^${prefix}-v[0-9]+$" || true); do
    ip link del "$link" 2>/dev/null || true
  done
  ip link del "$bridge" 2>/dev/null || true
  rm -rf "$state"
}

up() {
  need_root
  local n="${1:-}"
  shift || true
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 99 ] || die "usage: hosts.sh up N (1..99) [--dual-stack] [--cpus LIST]"
  local dual=0 cpus=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --dual-stack) dual=1 ;;
      --ipv6-only) dual=0 ;;
      --cpus) cpus="${2:-}"; shift ;;
      *) die "unknown option $1" ;;
    esac
    shift
  done
  command -v ip >/dev/null || die "ip (iproute2) is missing: run scripts/setup.sh"
  down
  mkdir -p "$state"
  echo "$n" >"$state/count"
  echo "$dual" >"$state/dual"
  ip link add "$bridge" type bridge
  ip link set "$bridge" up
  ip addr add "${net6}100/64" dev "$bridge" nodad
  [ "$dual" -eq 1 ] && ip addr add "${net4}100/24" dev "$bridge"
  local cores i ns link cpu
  cores=$(nproc)
  IFS=',' read -r -a cpu_list <<<"$cpus"
  for i in $(seq 1 "$n"); do
    ns=$(host_ns "$i")
    link=$(host_link "$i")
    ip netns add "$ns"
    ip link add "$link" type veth peer name eth0 netns "$ns"
    ip link set "$link" master "$bridge" up
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ip -n "$ns" addr add "${net6}${i}/64" dev eth0 nodad
    [ "$dual" -eq 1 ] && ip -n "$ns" addr add "${net4}${i}/24" dev eth0
    cpu="${cpu_list[$((i - 1))]:-$(((i - 1) % cores))}"
    echo "$cpu" >"$state/cpu$i"
  done
  # Wait until every host reaches the bridge (a refused TCP connection answers at once; silence times out),
  # at most 10 s.
  local deadline=$((SECONDS + 10)) rc
  for i in $(seq 1 "$n"); do
    while true; do
      rc=0
      ip netns exec "$(host_ns "$i")" timeout 1 bash -c "exec 3<>/dev/tcp/${net6}100/9" 2>/dev/null || rc=$?
      [ "$rc" -ne 124 ] && break
      [ $SECONDS -lt $deadline ] || die "host $i's link did not come up"
      sleep 0.1
    done
  done
  status
}

status() {
  local n i
  n=$(count)
  [ "$n" -gt 0 ] || { echo "hosts: none"; return; }
  for i in $(seq 1 "$n"); do
    local v4=""
    [ "$(cat "$state/dual")" -eq 1 ] && v4=" ${net4}${i}"
    echo "host $i: $(host_ns "$i") ${net6}${i}${v4} cpu $(cat "$state/cpu$i") link $(host_link "$i")"
  done
}

cmd="${1:-}"
shift || true
case "$cmd" in
  up) up "$@" ;;
  down) down ;;
  status) status ;;
  exec)
    check_host "${1:-}"
    i="$1"
    shift
    [ $# -gt 0 ] || die "usage: hosts.sh exec I CMD..."
    exec ip netns exec "$(host_ns "$i")" taskset -c "$(cat "$state/cpu$i")" "$@"
    ;;
  addr)
    check_host "${1:-}"
    if [ "${2:-}" = "-4" ]; then
      [ "$(cat "$state/dual")" -eq 1 ] || die "host $1 has no IPv4 address (IPv6-only)"
      echo "${net4}$1"
    else
      echo "${net6}$1"
    fi
    ;;
  link)
    need_root
    check_host "${1:-}"
    case "${2:-}" in
      up | down) ip link set "$(host_link "$1")" "$2" ;;
      *) die "usage: hosts.sh link I up|down" ;;
    esac
    ;;
  limit)
    need_root
    check_host "${1:-}"
    rate="${2:-}"
    [ -n "$rate" ] || die "usage: hosts.sh limit I RATE|off (RATE as tc writes it: 1gbit, 100mbit)"
    ns=$(host_ns "$1")
    link=$(host_link "$1")
    tc qdisc del dev "$link" root 2>/dev/null || true
    ip netns exec "$ns" tc qdisc del dev eth0 root 2>/dev/null || true
    if [ "$rate" != off ]; then
      # Toward the host (the bridge side sends) and from it (the host side sends).
      tc qdisc add dev "$link" root tbf rate "$rate" burst 256kb latency 100ms
      ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 256kb latency 100ms
    fi
    ;;
  bytes)
    check_host "${1:-}"
    # The bridge side's transmit is the host's receive.
    link=$(host_link "$1")
    echo "$(cat "/sys/class/net/$link/statistics/tx_bytes") $(cat "/sys/class/net/$link/statistics/rx_bytes")"
    ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; [ -z "$cmd" ] || exit 2 ;;
esac
