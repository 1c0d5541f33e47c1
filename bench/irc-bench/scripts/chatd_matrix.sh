#!/bin/bash
# The kit's matrix with chatd beside the three IRC servers, 3 reps, one results file: chatd (a fresh
# server and database per workload, and per W4 rep, with the flags of docs/BENCHMARKS.md), chatd
# with --deliver-after-commit for the latency workloads, then the IRC servers. Run from the
# repository's root after `cargo build --release` and `bench/irc-bench/scripts/setup.sh`:
#   bench/irc-bench/scripts/chatd_matrix.sh && bench/irc-bench/scripts/aggregate.py bench/irc-bench/.bench-work/results/chatd-matrix.jsonl
set -u
bin=$(realpath "${BIN:-target/release/chatd}")
kit=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$kit/.bench-work/results/chatd-matrix.jsonl}
ulimit -n 20000 2>/dev/null || true
mkdir -p "$(dirname "$out")"
# A disturbed run is tried again, except a memory one: on the same server the second try would
# find the first one's accounts made and measure the connections alone (memory does not depend on
# how busy the machine is anyway).
attempts() { case $1 in W4*) echo 1 ;; *) echo 2 ;; esac; }
serve() { # name extra-flags
  d=$(mktemp -d ${TMPDIR:-/tmp}/chatd-matrix.XXXX); chmod 755 $d
  ip netns exec bench "$bin" --listen 127.0.0.1:7000 --db "$d/chatd.redb" \
    --line-rate 1000000 --line-burst 1000000 --max-connections 19000 --scrypt-log-n 10 \
    --exempt 127.0.0.1 --msgs-per-minute 0 --stored-kib-per-day 0 --inbox-share 0 \
    --hash-per-address 0 --registrations-per-hour 0 --max-per-address 0 --idle-timeout 0 \
    --log-level warn $2 2> "$d/server.log" &
  pid=$!
  for _ in $(seq 1 600); do # ready when it accepts a connection (bounded: 60 s)
    ip netns exec bench bash -c "echo > /dev/tcp/127.0.0.1/7000" 2>/dev/null && break
    sleep 0.1
  done
}
run() { # name workload reps extra-flags [first-rep]
  serve "$1" "$4"
  echo "$1 $2 pid $pid uptime: $(uptime)"
  python3 $kit/scripts/run_matrix.py --name "$1" --addr 127.0.0.1:7000 --pid $pid --adapter chatd \
    --only $2 --reps $3 --first-rep ${5:-1} --attempts $(attempts $2) --quiet-wait 60 --out $out
  kill $pid; wait $pid
  rm -rf $d
}
for w in W2a W2c W2d W3; do run chatd $w 3 ""; done
for rep in 1 2 3; do run chatd W4 1 "" $rep; done
for w in W2c W2d W3; do run chatd-after-commit $w 3 "--deliver-after-commit"; done
echo "anchors uptime: $(uptime)"
cd $kit && python3 scripts/run_matrix.py --servers ngircd,inspircd,hybrid --only W2a,W2c,W2d,W3,W4 \
  --reps 3 --attempts 2 --quiet-wait 60 --out $out
echo "done uptime: $(uptime)"
python3 scripts/aggregate.py $out
