#!/bin/bash
# Where chatd's time and memory go under one of the kit's loads. One release server on a fresh
# database in the bench namespace, with the flags of the kit's chatd runs (login protection,
# quotas and the line rate off), then loadgen's chatd adapter with the workload given.
#
#   chatd_profile.sh callgrind BINARY LABEL PORT WORKLOAD...
#       the server under `valgrind --tool=callgrind` (`--scrypt-log-n 4`, so set-up is quick);
#       the counters are zeroed when loadgen prints its set-up line and dumped when it ends, so the
#       `.1` dump is the measured phase alone (the final dump, at exit, holds what ran after it:
#       commits still in flight). Prints each dump's instruction total. Read a dump with
#       `callgrind_annotate --inclusive=yes DUMP` (add `--tree=caller` for who calls what).
#   chatd_profile.sh syscalls BINARY LABEL PORT WORKLOAD...
#       `perf stat` of system calls, page faults, context switches and task-clock on the server's
#       pid, attached once loadgen's set-up is done (the measured phase alone); divide by loadgen's
#       deliveries.
#   chatd_profile.sh massif BINARY LABEL PORT WORKLOAD...
#       the server under `valgrind --tool=massif`; `ms_print OUT/LABEL.massif` shows the heap's
#       peak snapshot as a tree (for idle connections: `idle -n 5000 --hold 3 --settle 2`).
#   chatd_profile.sh ab REPS BIN_A LABEL_A BIN_B LABEL_B PORT WORKLOAD...
#       the kit's figures for two builds, interleaved rep by rep, a fresh server each run; prints
#       p50, p90, p99, deliveries/s and server CPU per delivery with the load average of each run.
#
# Examples (from the repository's root, after `cargo build --release` and `scripts/setup.sh`):
#   chatd_profile.sh callgrind target/release/chatd w3 7400 pairs -n 200 -m 50 --window 10
#   chatd_profile.sh callgrind target/release/chatd w2d 7400 fanout -n 1000 -s 1 -m 50 --rate 5
#   chatd_profile.sh syscalls target/release/chatd w3 7400 pairs -n 200 -m 300 --window 10
#   chatd_profile.sh massif target/release/chatd idle 7400 idle -n 5000 --hold 3 --settle 2
#   chatd_profile.sh ab 3 old/chatd old target/release/chatd new 7400 fanout -n 1000 -s 1 -m 250 --rate 50
# Output goes to OUT (default <kit>/.bench-work/profile/). Extra server flags: EXTRA="--io-threads 1".
# Extra valgrind flags: VGFLAGS="--separate-threads=yes" (one dump per thread, `-TID` at the end
# of its name: the store thread's cost on its own). Extra `perf stat` flags for syscalls:
# PERFFLAGS="--per-thread" (each thread's counts, `chatd-store` among them).
# SEED_DB=path: each run's server starts on a copy of that database instead of an empty one (a
# large one made by `examples/fill_db.rs`, for the cost per message on a grown database).
set -u
here=$(cd "$(dirname "$0")" && pwd -P)
. "$here/common.sh"
mode=${1:?usage: chatd_profile.sh callgrind|syscalls|massif|ab ...}
shift
out=$(realpath -m "${OUT:-$BENCH_DIR/profile}")
mkdir -p "$out"
ulimit -n 20000 2>/dev/null || true
require_netns

flags() { # log_n
  echo --line-rate 1000000 --line-burst 1000000 --max-connections 19000 --scrypt-log-n "$1" \
    --exempt 127.0.0.1 --msgs-per-minute 0 --stored-kib-per-day 0 --inbox-share 0 \
    --hash-per-address 0 --registrations-per-hour 0 --max-per-address 0 --idle-timeout 0 \
    --log-level warn ${EXTRA:-}
}
wait_port() { # port
  for _ in $(seq 1 300); do
    ip netns exec "$NETNS" bash -c "echo > /dev/tcp/127.0.0.1/$1" 2>/dev/null && return 0
    sleep 0.2
  done
  die "the server did not listen on port $1"
}
fresh_db() {
  db_dir=$(mktemp -d "${TMPDIR:-/tmp}/chatd-profile.XXXX")
  chmod 755 "$db_dir"
  if [ -n "${SEED_DB:-}" ]; then
    cp -- "$SEED_DB" "$db_dir/chatd.redb"
    chmod 644 "$db_dir/chatd.redb"
  fi
}
loadgen_bg() { # port label args...: loadgen in the background, $lg its pid, output $out/label.{json,err}
  local port=$1 label=$2
  shift 2
  ip netns exec "$NETNS" "$LOADGEN" --addr "127.0.0.1:$port" --adapter chatd -c 50 --timeout 400 \
    --handshake-timeout 300 --json --label "$label" --server-pid "$pid" "$@" \
    > "$out/$label.json" 2> "$out/$label.err" &
  lg=$!
}
wait_setup() { # label: until loadgen says its set-up is done (at most 10 minutes under valgrind)
  for _ in $(seq 1 6000); do
    grep -q 'setup:' "$out/$1.err" && return 0
    kill -0 "$lg" 2>/dev/null || return 0
    sleep 0.1
  done
}
stop_server() {
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  rm -rf "$db_dir"
}

case $mode in
callgrind | massif | syscalls)
  bin=$(realpath "${1:?BINARY}"); label=${2:?LABEL}; port=${3:?PORT}
  shift 3
  fresh_db
  case $mode in
  callgrind)
    rm -f "$out/$label".cg.*
    ip netns exec "$NETNS" valgrind --tool=callgrind --callgrind-out-file="$out/$label.cg.%p" \
      --dump-instr=no --collect-systime=no ${VGFLAGS:-} "$bin" --listen "127.0.0.1:$port" \
      --db "$db_dir/chatd.redb" $(flags 4) 2> "$out/$label.vg" &
    ;;
  massif)
    ip netns exec "$NETNS" valgrind --tool=massif --massif-out-file="$out/$label.massif" \
      --detailed-freq=1 --max-snapshots=200 --threshold=0.3 "$bin" --listen "127.0.0.1:$port" \
      --db "$db_dir/chatd.redb" $(flags 4) 2> "$out/$label.vg" &
    ;;
  syscalls)
    ip netns exec "$NETNS" "$bin" --listen "127.0.0.1:$port" --db "$db_dir/chatd.redb" \
      $(flags 4) 2> "$out/$label.server.log" &
    ;;
  esac
  pid=$!
  wait_port "$port"
  echo "$label uptime: $(uptime)"
  loadgen_bg "$port" "$label" "$@"
  wait_setup "$label"
  case $mode in
  callgrind)
    callgrind_control -z "$pid" > /dev/null 2>&1
    wait "$lg"
    callgrind_control -d "$pid" > /dev/null 2>&1
    sleep 1
    stop_server
    for f in "$out/$label".cg.*; do echo "  $f $(grep -E '^summary:' "$f")"; done
    ;;
  massif)
    wait "$lg"
    stop_server
    echo "  ms_print $out/$label.massif"
    ;;
  syscalls)
    perf stat -e 'syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_futex,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_pwrite64,syscalls:sys_enter_fdatasync,syscalls:sys_enter_mprotect,syscalls:sys_enter_madvise,page-faults,context-switches,task-clock' \
      ${PERFFLAGS:-} -p "$pid" -o "$out/$label.perf" 2> /dev/null &
    st=$!
    wait "$lg"
    kill -INT "$st"
    wait "$st" 2> /dev/null
    stop_server
    grep -v '^#\|^$' "$out/$label.perf"
    ;;
  esac
  python3 - "$out/$label.json" << 'EOF'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit("loadgen wrote no result: %s" % e)
if j.get("deliveries"):
    print("  deliveries %s, server CPU %.2f us per delivery" % (j["deliveries"], j.get("server_cpu_us_per_delivery", 0)))
EOF
  ;;
ab)
  reps=${1:?REPS}; ba=$(realpath "${2:?BIN_A}"); la=${3:?LABEL_A}
  bb=$(realpath "${4:?BIN_B}"); lb=${5:?LABEL_B}; port=${6:?PORT}
  shift 6
  one() { # bin label rep workload...
    local b=$1 l=$2 r=$3
    shift 3
    fresh_db
    ip netns exec "$NETNS" "$b" --listen "127.0.0.1:$port" --db "$db_dir/chatd.redb" $(flags 10) \
      2> "$out/ab-$l-$r.server.log" &
    pid=$!
    wait_port "$port"
    load=$(uptime | sed 's/.*load average: //')
    loadgen_bg "$port" "ab-$l-$r" "$@"
    wait "$lg"
    stop_server
    python3 - "$out/ab-$l-$r.json" "$l" "$r" "$load" << 'EOF'
import json, sys
path, label, rep, load = sys.argv[1:]
try:
    j = json.load(open(path))
except Exception as e:
    sys.exit("%s rep %s: loadgen wrote no result: %s" % (label, rep, e))
l = j.get("latency", {})
print("%-12s rep %s  p50 %7.2f  p90 %7.2f  p99 %7.2f ms  %10.0f deliveries/s  cpu %5.2f us/delivery  load %s"
      % (label, rep, l.get("p50_ms", 0), l.get("p90_ms", 0), l.get("p99_ms", 0),
         j.get("deliveries_per_s", 0), j.get("server_cpu_us_per_delivery", 0), load))
EOF
  }
  for r in $(seq 1 "$reps"); do
    one "$ba" "$la" "$r" "$@"
    one "$bb" "$lb" "$r" "$@"
  done
  ;;
*)
  die "unknown mode $mode: callgrind, syscalls, massif or ab"
  ;;
esac
