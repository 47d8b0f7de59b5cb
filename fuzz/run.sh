#!/bin/sh
# Runs one fuzz target with the settings used on the shared 2-core machine (one fuzzer at a time).
# Usage: ./run.sh TARGET [SECONDS] [extra libFuzzer flags...]
# Needs nightly and cargo-fuzz: `cargo install cargo-fuzz`.
set -eu
cd "$(dirname "$0")"
target=$1
secs=${2:-300}
shift; [ $# -gt 0 ] && shift
mkdir -p "corpus/$target" "artifacts/$target" logs
case $target in
    shm_objects|handle_decode) maxlen=1024 ;;
    *) maxlen=8192 ;;
esac
# Hand-made seeds, when the target has some, are read as a second corpus (new inputs go to the first).
seeds=""
[ -d "seeds/$target" ] && seeds="seeds/$target"
cargo +nightly fuzz run "$target" "corpus/$target" $seeds -- \
    -jobs=1 -workers=1 -rss_limit_mb=4096 -timeout=10 -max_len=$maxlen \
    -max_total_time="$secs" -print_final_stats=1 "$@" \
    > "logs/$target.run.log" 2>&1 || true
# With -jobs=1, libFuzzer writes the fuzzing output to fuzz-0.log in the working directory.
[ -f fuzz-0.log ] && mv fuzz-0.log "logs/$target.log"
tail -n 25 "logs/$target.log" 2>/dev/null || tail -n 25 "logs/$target.run.log"
# What a target may have left in /dev/shm if a run crashed (a finished run removes its own files).
ls /dev/shm | grep '^mproc\.' || true
