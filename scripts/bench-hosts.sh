#!/usr/bin/env bash
# Equal hardware, measured: 1P1D on two hosts with one core each (prefill on CPU 0, decode on CPU 1, the proxy
# sharing CPU 0) against one colocated instance with both cores, the same workload through `tandem bench --compare`
# at each rate: 512-token prompts, 64 tokens out, Poisson arrivals, SLOs TTFT <= 2 s and TPOT <= 50 ms.
# Root (network namespaces). Results (JSON, SVG, tables) go to OUT (default docs/bench/hosts).
#
#   scripts/bench-hosts.sh [RATES...]        default rates: 0.25 0.5 0.75 1.0
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-docs/bench/hosts}"
prompts="${PROMPTS:-24}"
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(0.25 0.5 0.75 1.0)
tandem="$PWD/.build/release/tandem"
[ -x "$tandem" ] || { echo "bench-hosts: build first: swift build -c release" >&2; exit 1; }
mkdir -p "$out"

trap 'scripts/hosts.sh down >/dev/null 2>&1 || true' EXIT
# Hosts: 1 proxy (CPU 0), 2 prefill (CPU 0), 3 decode (CPU 1), 4 colocated (CPUs 0 and 1).
scripts/hosts.sh up 4 --cpus 0,0,1,0-1 >/dev/null
config() {
  echo "{\"kv_connector\":\"P2pNcclConnector\",\"kv_role\":\"$1\",\"kv_buffer_size\":\"1e9\",\"kv_port\":\"$3\",\
\"kv_connector_extra_config\":{\"proxy_ip\":\"fd00:7a::1\",\"proxy_port\":\"30002\",\"http_port\":\"$2\",\
\"send_type\":\"PUT_ASYNC\",\"nccl_num_channels\":\"16\"}}"
}
scripts/hosts.sh exec 1 "$tandem" proxy >"$out/proxy.log" 2>&1 &
scripts/hosts.sh exec 2 "$tandem" serve default --host 0.0.0.0 --port 8081 \
  --kv-transfer-config "$(config kv_producer 8081 8082)" >"$out/prefill.log" 2>&1 &
scripts/hosts.sh exec 3 "$tandem" serve default --host 0.0.0.0 --port 8083 \
  --kv-transfer-config "$(config kv_consumer 8083 8084)" >"$out/decode.log" 2>&1 &
scripts/hosts.sh exec 4 "$tandem" serve default --host :: --port 8085 >"$out/colocated.log" 2>&1 &

deadline=$((SECONDS + 120))
until curl -sf 'http://[fd00:7a::1]:10002/health' | grep -q '"status":"ok"' \
  && curl -sf 'http://[fd00:7a::4]:8085/health' >/dev/null; do
  [ $SECONDS -lt $deadline ] || { echo "bench-hosts: the deployments did not come up (see $out/*.log)" >&2; exit 1; }
  sleep 0.5
done
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs" | tee "$out/machine.txt"

seed=7
for rate in "${rates[@]}"; do
  # A seed per rate: every run's prompts are new to both deployments' prefix caches.
  seed=$((seed + 1))
  echo "== rate $rate req/s (seed $seed)" >&2
  "$tandem" bench --base-url 'http://[fd00:7a::1]:10002' --compare 'http://[fd00:7a::4]:8085' \
    --label "1P1D, one core each (proxy on host 1)" --compare-label "colocated, two cores" \
    --num-prompts "$prompts" --input-len 512 --range-ratio 0 --output-len 64 --request-rate "$rate" --seed "$seed" \
    --tokenizer default --goodput ttft:2000 tpot:50 --percentiles 50,99 \
    --result-json "$out/rate-$rate.json" --plot "$out/rate-$rate.svg" | tee "$out/rate-$rate.txt"
done
