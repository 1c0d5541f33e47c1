#!/bin/bash
# The growth benchmark: the kit's W3 and W2d on an empty database and on one of 10 million stored
# messages, the two alternated rep by rep (a fresh server each run; the large file is reused, so
# it grows by W3's 200,000 messages a rep), then the RSS of a server on the large file with no
# clients. Build the large file first (about 2 GB, 100 to 200 s):
#   cargo build --release --example fill_db
#   target/release/examples/fill_db /path/to/big/chatd.redb 10000000 100000
#   BIG=/path/to/big/chatd.redb bench/irc-bench/scripts/chatd_growth.sh
#   bench/irc-bench/scripts/aggregate.py bench/irc-bench/.bench-work/results/chatd-growth.jsonl
# Run from the repository's root after `cargo build --release` and `bench/irc-bench/scripts/setup.sh`.
set -u
bin=$(realpath "${BIN:-target/release/chatd}")
kit=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$kit/.bench-work/results/chatd-growth.jsonl}
big=$(realpath "${BIG:?set BIG to the database of 10 million messages}")
ulimit -n 20000 2>/dev/null || true
mkdir -p "$(dirname "$out")"
chmod 755 "$(dirname "$big")"
serve() { # db
  ip netns exec bench "$bin" --listen 127.0.0.1:7000 --db "$1" \
    --line-rate 1000000 --line-burst 1000000 --max-connections 19000 --scrypt-log-n 10 \
    --exempt 127.0.0.1 --msgs-per-minute 0 --stored-kib-per-day 0 --inbox-share 0 \
    --hash-per-address 0 --registrations-per-hour 0 --max-per-address 0 --idle-timeout 0 \
    --log-level warn 2>> "${TMPDIR:-/tmp}/chatd-growth-server.log" &
  pid=$!
  for _ in $(seq 1 600); do # a large file takes longer to open
    ip netns exec bench bash -c "echo > /dev/tcp/127.0.0.1/7000" 2>/dev/null && return
    sleep 0.1
  done
}
run() { # name workload db rep
  serve "$3"
  echo "$1 $2 pid $pid uptime: $(uptime)"
  python3 $kit/scripts/run_matrix.py --name "$1" --addr 127.0.0.1:7000 --pid $pid --adapter chatd \
    --only $2 --reps 1 --first-rep $4 --attempts 2 --quiet-wait 60 --out $out
  kill $pid; wait $pid
}
for rep in 1 2 3; do
  for w in W3 W2d; do
    d=$(mktemp -d ${TMPDIR:-/tmp}/chatd-growth.XXXX); chmod 755 $d
    run chatd-empty $w "$d/chatd.redb" $rep
    rm -rf $d
    run chatd-10M $w "$big" $rep
  done
done
serve "$big"
sleep 5
echo "a server on the large file with no clients: $(grep VmRSS /proc/$pid/status)"
kill $pid; wait $pid
echo "done uptime: $(uptime)"
python3 $kit/scripts/aggregate.py $out
