#!/usr/bin/env bash
# dynakv at two data sizes, side by side in one sitting.
#
#   bash benches/scale.sh                      (100,000 and 10,000,000 keys)
#   SCALE_KEYS=2000000 bash benches/scale.sh   (a shorter second size)
#
# For each size, on a fresh 3-process cluster on 127.0.0.1 (N=3, R=2, W=2,
# fsync periodic, `serve -c conf/local/nodeN.toml`): preload every key
# once, then puts/s and gets/s with their p99 over DURATION seconds
# (`dynakv bench`, CLIENTS clients, VALUE_SIZE-byte values); the RSS of the
# three nodes and their disk use against the replicated raw data (3 x keys
# x (key + value)); then node1 is killed (SIGKILL) 10 s into a run of puts
# and started again (the table shows the journals it left: what its start
# replays), and the script times how long until node1 answers a get of one of its own
# keys from its local copy (`dynakv inspect`: "restart"), and until its
# start-up scan has rebuilt its hash trees, so anti-entropy and handoff
# run again (its log's "storage scanned": "scan"). Prints one table with
# the second size's ratio to the first. DYNAKV=PATH runs another binary.
# RANDOM_VALUES=1 writes random bytes instead of 'x' (`--random-values`):
# values that do not compress, for the disk's true amplification.
#
# Then the value sizes, through benches/peers.sh: for each SIZE:KEYS of
# VALUE_SIZES (default 1 KiB x 100,000, 64 KiB x 10,000, 1 MiB x 1,000),
# dynakv (fsync periodic) and Redis `SET`/`GET` (appendfsync everysec, one
# server, redis-benchmark; installed when missing and root) each run
# DURATION seconds of puts and of gets; the table gives both in MB/s and
# dynakv's ratio to Redis. Last, CLIENTS clients' 100-byte gets alone and
# beside 4 clients putting 1 MiB values as fast as they are answered
# (`BESIDE=1 peers.sh`): the gets' p99 each way. VALUE_SIZES= skips both.
#
# How long it takes: the preload writes KEYS keys at the cluster's put rate
# (some 20,000/s on the 2-core VM, so about 8 minutes for 10,000,000),
# then 2 x DURATION of load and some 20 s of restart per size; the value
# sizes take about 4 x DURATION each, and 1 MiB beside small gets about
# 3 x DURATION. The whole run takes some 17 minutes on the 2-core VM.
# TIME_LIMIT (seconds, default 3600)
# bounds the whole run: past it, the script stops everything and exits
# non-zero. Every process it started is stopped and its data removed at
# the end, whatever happens.
set -euo pipefail

CLIENTS=${CLIENTS:-50}
VALUE_SIZE=${VALUE_SIZE:-100}
RANDOM_VALUES=${RANDOM_VALUES:-0}
SMALL_KEYS=${SMALL_KEYS:-100000}
SCALE_KEYS=${SCALE_KEYS:-10000000}
DURATION=${DURATION:-20}
VALUE_SIZES=${VALUE_SIZES-1024:100000 65536:10000 1048576:1000}
TIME_LIMIT=${TIME_LIMIT:-3600}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/dynakv-scale.XXXXXX)
DYNAKV=${DYNAKV:-"$ROOT/target/release/dynakv"}
NODES=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
RESULTS="$WORK/results"
PIDS=(0 0 0)
START=$(date +%s)

say() { echo "== $*" >&2; }

stop_all() {
    for pid in "${PIDS[@]}"; do
        [ "$pid" -gt 0 ] && kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        [ "$pid" -gt 0 ] && wait "$pid" 2>/dev/null || true
    done
    PIDS=(0 0 0)
}

cleanup() {
    stop_all
    rm -rf "$WORK"
}
trap cleanup EXIT

# Ends the run once it has taken TIME_LIMIT seconds.
check_time() {
    if [ $(( $(date +%s) - START )) -gt "$TIME_LIMIT" ]; then
        say "over TIME_LIMIT=${TIME_LIMIT}s: stopping"
        exit 1
    fi
}

# start_node I DIR [LEVEL]: node I's process on data directory DIR,
# logging at LEVEL (warn).
start_node() {
    local i=$1 dir=$2 level=${3:-warn}
    DYNAKV__NODE__DATA_DIR="$dir/node$i" DYNAKV__STORAGE__FSYNC=periodic DYNAKV__LOG__LEVEL=$level \
        "$DYNAKV" serve -c "$ROOT/conf/local/node$i.toml" 2>>"$dir/node$i.log" &
    PIDS[$((i - 1))]=$!
}

# Waits until "$@" succeeds, TIME_LIMIT permitting; prints the seconds taken.
time_until() {
    local t0 now
    t0=$(date +%s.%N)
    until "$@" >/dev/null 2>&1; do
        check_time
        sleep 0.05
    done
    now=$(date +%s.%N)
    python3 -c "print(round($now - $t0, 2))"
}

rss_mb() {
    local total=0 kb
    for pid in "${PIDS[@]}"; do
        kb=$(ps -o rss= -p "$pid" 2>/dev/null || echo 0)
        total=$((total + kb))
    done
    echo $((total / 1024))
}

# measure KEYS: one size's row, appended to $RESULTS.
measure() {
    local keys=$1 dir="$WORK/k$1"
    say "$keys keys: starting 3 nodes"
    mkdir -p "$dir"
    for i in 1 2 3; do start_node "$i" "$dir"; done
    time_until "$DYNAKV" put scale-ready yes --node 127.0.0.1:7001 --timeout 1s >/dev/null
    local common=(--node "$NODES" --clients "$CLIENTS" --value-size "$VALUE_SIZE"
                  --keys "$keys" --json)
    [ "$RANDOM_VALUES" = 1 ] && common+=(--random-values)
    say "$keys keys: preloading"
    local t0 t1 put get
    t0=$(date +%s)
    # The preload writes every key once; its own timed run is a second.
    "$DYNAKV" bench "${common[@]}" --mix put=100 --duration 1s --preload >/dev/null
    t1=$(date +%s)
    check_time
    say "$keys keys: puts, then gets, ${DURATION}s each"
    put=$("$DYNAKV" bench "${common[@]}" --mix put=100 --duration "${DURATION}s")
    get=$("$DYNAKV" bench "${common[@]}" --mix get=100 --duration "${DURATION}s")
    check_time
    local rss disk
    rss=$(rss_mb)
    disk=$(du -sb "$dir" | cut -f1)
    say "$keys keys: restarting node1 after SIGKILL under puts"
    # The kill lands under load, so the journals it leaves behind are
    # those of a busy node; the load runs on against the other two.
    "$DYNAKV" bench "${common[@]}" --mix put=100 --duration 20s >/dev/null 2>&1 &
    local load=$!
    sleep 10
    local journal
    journal=$(du -cb "$dir"/node1/*.jnl | tail -1 | cut -f1)
    kill -9 "${PIDS[0]}"
    wait "${PIDS[0]}" 2>/dev/null || true
    : >"$dir/node1.log"
    start_node 1 "$dir" info
    local t2 restart scan
    t2=$(date +%s.%N)
    restart=$(time_until "$DYNAKV" inspect bench-0 --node 127.0.0.1:7001 --timeout 1s)
    time_until grep -q "storage scanned" "$dir/node1.log" >/dev/null
    scan=$(python3 -c "print(round($(date +%s.%N) - $t2, 2))")
    wait "$load" || true
    stop_all
    python3 - "$keys" "$VALUE_SIZE" "$((t1 - t0))" "$put" "$get" "$rss" "$disk" "$restart" "$scan" \
        "$journal" <<'PY' | tee -a "$RESULTS" >&2
import json, sys
keys, size, preload = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
put, get = json.loads(sys.argv[4]), json.loads(sys.argv[5])
rss, disk, restart = int(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8])
scan, journal = float(sys.argv[9]), int(sys.argv[10])
p, g = put["ops"]["put"], get["ops"]["get"]
raw = 3 * keys * (len(f"bench-{keys - 1}") + size)
print(json.dumps({"keys": keys, "preload_s": preload,
                  "put": p["ops_per_sec"], "put_p99_ms": p["latency_us"]["p99"] / 1000,
                  "get": g["ops_per_sec"], "get_p99_ms": g["latency_us"]["p99"] / 1000,
                  "rss_mb": rss, "disk_gb": disk / 1e9, "disk_x_raw": disk / raw,
                  "restart_s": restart, "scan_s": scan, "journal_mb": journal >> 20,
                  "errors": p.get("errors", 0) + g.get("errors", 0)}))
PY
    rm -rf "$dir"
}

# peers VAR=VALUE...: benches/peers.sh with those settings, stopped when
# TIME_LIMIT runs out.
peers() {
    local left=$(( TIME_LIMIT - ($(date +%s) - START) ))
    [ "$left" -gt 0 ] || { say "over TIME_LIMIT=${TIME_LIMIT}s: stopping"; exit 1; }
    env DYNAKV="$DYNAKV" CLIENTS="$CLIENTS" DURATION="$DURATION" "$@" \
        timeout "$left" bash "$ROOT/benches/peers.sh"
}

# value_sizes: dynakv and Redis at each of VALUE_SIZES into $SIZES
# (peers.sh's result lines, one per system and size), then 1 MiB puts beside small gets into
# $BESIDE_LINE.
value_sizes() {
    local pair size keys
    for pair in $VALUE_SIZES; do
        size=${pair%%:*} keys=${pair##*:}
        [[ "$size" =~ ^[1-9][0-9]*$ && "$keys" =~ ^[1-9][0-9]*$ ]] ||
            { say "VALUE_SIZES takes SIZE:KEYS pairs of whole numbers, not '$pair'"; exit 1; }
        say "$size-byte values, $keys keys: dynakv and Redis"
        peers PEERS=redis MODES=periodic REDIS_MODES=everysec VALUE_SIZE="$size" KEYS="$keys" \
            RESULTS_OUT="$SIZES" >/dev/null
    done
    say "100-byte gets alone and beside 1 MiB puts"
    peers PEERS= BESIDE=1 VALUE_SIZE=100 | grep '^round' >"$BESIDE_LINE" || true
}

[ -x "$DYNAKV" ] || { say "build it first: cargo build --release -p dynakv-actors"; exit 1; }
SIZES="$WORK/sizes" BESIDE_LINE="$WORK/beside"
: >"$SIZES"
: >"$BESIDE_LINE"
measure "$SMALL_KEYS"
measure "$SCALE_KEYS"
[ -n "$VALUE_SIZES" ] && value_sizes

python3 - "$RESULTS" "$CLIENTS" "$VALUE_SIZE" "$DURATION" "$(( $(date +%s) - START ))" \
    "$SIZES" "$BESIDE_LINE" "$RANDOM_VALUES" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
values = "random " if sys.argv[8] == "1" else ""
print(f"\n{sys.argv[2]} clients, {sys.argv[3]}-byte {values}values, {sys.argv[4]} s per run, "
      f"3 nodes on loopback, fsync periodic; the whole run took {sys.argv[5]} s\n")
print(f"{'keys':>11} {'puts/s':>8} {'put p99':>8} {'gets/s':>8} {'get p99':>8} "
      f"{'RSS, 3 nodes':>12} {'disk':>8} {'x raw':>6} {'journal':>8} {'restart':>8} {'scan':>7}")
for r in rows:
    print(f"{r['keys']:>11,} {r['put']:>8,.0f} {r['put_p99_ms']:>6.1f}ms {r['get']:>8,.0f} "
          f"{r['get_p99_ms']:>6.1f}ms {r['rss_mb']:>9} MB {r['disk_gb']:>5.2f} GB "
          f"{r['disk_x_raw']:>5.1f}x {r['journal_mb']:>5} MB {r['restart_s']:>6.1f} s {r['scan_s']:>5.1f} s")
if len(rows) == 2:
    a, b = rows
    print(f"\nat {b['keys']:,} keys against {a['keys']:,}: puts {b['put'] / a['put']:.2f}x, "
          f"gets {b['get'] / a['get']:.2f}x, put p99 {b['put_p99_ms'] / a['put_p99_ms']:.2f}x, "
          f"get p99 {b['get_p99_ms'] / a['get_p99_ms']:.2f}x")
sizes = [json.loads(l) for l in open(sys.argv[6]) if l.strip()]
if sizes:
    print(f"\nValue sizes (dynakv fsync periodic, Redis appendfsync everysec), MB/s:\n")
    print(f"{'value':>9} {'keys':>9} {'dynakv puts':>12} {'gets':>8} {'Redis SET':>10} {'GET':>8} "
          f"{'puts x Redis':>13} {'gets x Redis':>13} {'put p99':>9}")
    for size in sorted({r["size"] for r in sizes}):
        mine = next((r for r in sizes if r["size"] == size and r["system"] == "dynakv"), None)
        redis = next((r for r in sizes if r["size"] == size and r["system"] == "redis"), None)
        if not mine or not redis:
            print(f"{size:>9,} (a run is missing: see the messages above)")
            continue
        mb = lambda ops: ops * size / 1e6
        print(f"{size:>9,} {mine['keys']:>9,} {mb(mine['put']):>12.1f} {mb(mine['get']):>8.1f} "
              f"{mb(redis['put']):>10.1f} {mb(redis['get']):>8.1f} {mine['put'] / redis['put']:>12.2f}x "
              f"{mine['get'] / redis['get']:>12.2f}x {mine['p99_put_ms']:>7.1f}ms")
beside = open(sys.argv[7]).read().strip()
if beside:
    print(f"\n100-byte gets alone and beside 1 MiB puts (4 clients, uncapped):\n  {beside}")
PY
