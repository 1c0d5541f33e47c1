#!/bin/bash
# The scale sweep with chatd beside the three IRC servers, one results file: a room (an IRC
# channel) of 100, 1,000 and 5,000 members (deliveries/s and latency), then 10,000 and 19,000 idle
# sessions (RSS; 19,000 is as many as a hard limit of 20,000 open files per process allows). chatd
# gets a fresh server and database per workload and per idle rep, with the flags of
# docs/BENCHMARKS.md. Run from the repository's root after `cargo build --release` and
# `bench/irc-bench/scripts/setup.sh`:
#   bench/irc-bench/scripts/chatd_scale.sh && bench/irc-bench/scripts/aggregate.py bench/irc-bench/.bench-work/results/chatd-scale.jsonl
# REPS (default 3) sets the reps of the room workloads; ANCHORS=0 leaves the IRC servers out.
set -u
bin=$(realpath "${BIN:-target/release/chatd}")
kit=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$kit/.bench-work/results/chatd-scale.jsonl}
reps=${REPS:-3}
ulimit -n 20000 2>/dev/null || true
mkdir -p "$(dirname "$out")"
# A disturbed run is tried again, except a memory one: on the same server the second try would
# find the first one's accounts made and measure the connections alone (memory does not depend on
# how busy the machine is anyway).
attempts() { case $1 in W4*) echo 1 ;; *) echo 2 ;; esac; }
run() { # workload reps
  d=$(mktemp -d ${TMPDIR:-/tmp}/chatd-scale.XXXX); chmod 755 $d
  ip netns exec bench "$bin" --listen 127.0.0.1:7000 --db "$d/chatd.redb" \
    --line-rate 1000000 --line-burst 1000000 --max-connections 19500 --scrypt-log-n 10 \
    --exempt 127.0.0.1 --msgs-per-minute 0 --stored-kib-per-day 0 --inbox-share 0 \
    --hash-per-address 0 --registrations-per-hour 0 --max-per-address 0 --idle-timeout 0 \
    --log-level warn 2> "$d/server.log" &
  pid=$!
  for _ in $(seq 1 600); do # ready when it accepts a connection (bounded: 60 s)
    ip netns exec bench bash -c "echo > /dev/tcp/127.0.0.1/7000" 2>/dev/null && break
    sleep 0.1
  done
  echo "chatd $1 pid $pid uptime: $(uptime)"
  python3 $kit/scripts/run_matrix.py --name chatd --addr 127.0.0.1:7000 --pid $pid --adapter chatd \
    --only $1 --reps $2 --attempts $(attempts $1) --quiet-wait 60 --out $out
  kill $pid; wait $pid
  rm -rf $d
}
for w in S100 S1000 S5000; do run $w $reps; done
run W4x 1
run W4-19k 1
if [ "${ANCHORS:-1}" != 0 ]; then
  echo "anchors uptime: $(uptime)"
  (cd $kit && python3 scripts/run_matrix.py --servers ngircd,inspircd,hybrid \
    --only S100,S1000,S5000,W4x,W4-19k --reps $reps --attempts 2 --quiet-wait 60 --out $out)
fi
echo "done uptime: $(uptime)"
python3 $kit/scripts/aggregate.py $out
