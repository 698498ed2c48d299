#!/bin/bash
# The overload A/B of docs/benchmarks.md ("A small server past its capacity").
# The server is held to 30 % of one core (cgroup v1 cpu quota, 3 ms per
# 10 ms), so that it is overloaded while the load generator, on the other
# core, is not. Arms, alternated: N = shedding and the router's overload
# mode off, S = the defaults. Needs root and the cgroup v1 cpu controller
# at /sys/fs/cgroup/cpu; writes $OUT/quota30-<run>-<arm>.{json,log}.
set -u
cd "$(dirname "$0")/../.."
export TELEBRIDGE_SECRET="${TELEBRIDGE_SECRET:-telebridge-development-secret-change-me-before-use}"
OUT="${OUT:-/tmp}"
group=/sys/fs/cgroup/cpu/telebridge-quota
mkdir -p "$group"
echo 10000 > "$group/cpu.cfs_period_us"
echo 3000 > "$group/cpu.cfs_quota_us"
n=0
for arm in N S S N; do
  n=$((n + 1))
  extra=()
  if [ "$arm" = N ]; then
    extra=(--server-setting signaling.shed_after_s=0 --server-setting sfu.router.overload_lag=0)
  fi
  # Move the spawned server into the group as soon as it exists.
  (
    for _ in $(seq 1 400); do
      pid=$(pgrep -f "signaling.cli serve" | head -1)
      if [ -n "$pid" ]; then echo "$pid" > "$group/cgroup.procs"; break; fi
      sleep 0.05
    done
  ) &
  timeout 400 .venv/bin/telebridge bench --spawn --subscribers 200 --duration 30 \
    --server-cpus 0 --server-workers 0 "${extra[@]}" \
    --json "$OUT/quota30-$n-$arm.json" > "$OUT/quota30-$n-$arm.log" 2>&1
  wait
  echo "run $n $arm done"
done
