#!/bin/sh
# Runs every fuzz target (or the ones named) for SECONDS each, one after the other, with the
# protocol dictionary and the checked-in seeds. New corpus entries go to fuzz/corpus/<target>/,
# crashes to fuzz/artifacts/<target>/ (both ignored by git).
#
#   fuzz/run-all.sh SECONDS [TARGET...]
#
# Works on the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly-only flags.
set -eu
cd "$(dirname "$0")"
secs=${1:?usage: fuzz/run-all.sh SECONDS [TARGET...]}
shift
targets=${*:-line_framing command_parse roundtrip server_line core inflate irc}
status=0
for t in $targets; do
    mkdir -p "corpus/$t"
    echo "== $t for ${secs}s"
    if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -dict="$PWD/protocol.dict" -print_final_stats=1; then
        echo "== $t FAILED; the input is in fuzz/artifacts/$t/"
        status=1
    fi
done
exit $status
