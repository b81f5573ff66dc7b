#!/usr/bin/env bash
# dynakv side by side with etcd and Redis, on this machine, in one run.
#
#   bash benches/peers.sh            (as root it installs what it lacks)
#
# One after another, on 127.0.0.1, with the same client count, value size,
# key count and duration (override with CLIENTS, VALUE_SIZE, KEYS,
# DURATION seconds):
#   - dynakv: 3 `serve` processes (N=3, R=2, W=2), fsync "periodic" and
#     "always"; load from `dynakv bench` (puts after a preload, then gets);
#   - etcd: a 3-member cluster (Debian's etcd-server); load from
#     benches/etcd-load, a small Rust client over etcd's gRPC API
#     (linearizable gets);
#   - Redis: one unreplicated server (Debian's redis-server), appendonly
#     with appendfsync everysec and always; load from redis-benchmark.
# With TLS=1, dynakv also runs with fsync "periodic" and [tls] on (certs from
# `dynakv certs init`; the bench verifies the nodes), and the table ends
# with TLS's cost as ratios to the plaintext run. PEERS (default "etcd
# redis") names the peers to run; PEERS= runs dynakv alone. DYNAKV=PATH
# runs that dynakv binary instead of building this tree (to compare builds
# side by side: alternate runs of each).
# Prints one table with dynakv's ratio to each peer. With ROUNDS=n the five
# runs are repeated n times in turn; the table shows each figure's median,
# which steadies the ratios on a machine whose speed drifts, and dynakv's
# put ratio to each peer follows round by round. A peer that cannot be
# installed is skipped with a message. Every server started here is stopped
# at the end. BESIDE=1 runs something else: small gets alone and beside
# 1 MiB puts (see run_beside). MODES (default "periodic always") names
# dynakv's fsync modes to run, REDIS_MODES (default "everysec always")
# Redis's; RESULTS_OUT=FILE appends each run's result, one JSON line each with
# its value size and key count (benches/scale.sh reads them).
set -euo pipefail

CLIENTS=${CLIENTS:-50}
VALUE_SIZE=${VALUE_SIZE:-100}
KEYS=${KEYS:-100000}
DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-1}
TLS=${TLS:-0}
PEERS=${PEERS-etcd redis}
MODES=${MODES-periodic always}
REDIS_MODES=${REDIS_MODES-everysec always}
RESULTS_OUT=${RESULTS_OUT:-}
# redis-benchmark takes a request count, not a time: unless set here, a
# short probe sizes it so that each Redis test lasts about DURATION.
REDIS_REQUESTS=${REDIS_REQUESTS:-}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/dynakv-peers.XXXXXX)
RESULTS="$WORK/results"
PIDS=()

stop_all() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

cleanup() {
    stop_all
    rm -rf "$WORK"
}
trap cleanup EXIT

say() { echo "== $*" >&2; }

# Installs Debian packages when missing and allowed; returns 1 if it cannot.
need() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        say "cannot install ${missing[*]} (not root)"
        return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; } ||
        { say "cannot install ${missing[*]}"; return 1; }
}

# Succeeds when an HTTP GET of $1 answers 200.
http_ok() {
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1"
}

# Waits until "$@" succeeds (30 s at most).
wait_for() {
    for _ in $(seq 1 150); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    say "timed out waiting for: $*"
    return 1
}

# record SYSTEM MODE PUT_JSON GET_JSON: one result line from two JSON reports.
record() {
    python3 - "$1" "$2" "$3" "$4" "$VALUE_SIZE" "$KEYS" <<'PY' | tee -a "$RESULTS" >&2
import json, sys
system, mode, put, get = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
p, g = put["ops"]["put"], get["ops"]["get"]
print(json.dumps({"system": system, "mode": mode, "size": int(sys.argv[5]), "keys": int(sys.argv[6]),
                  "put": p["ops_per_sec"], "get": g["ops_per_sec"],
                  "p99_put_ms": p["latency_us"]["p99"] / 1000, "p99_get_ms": g["latency_us"]["p99"] / 1000,
                  "errors": p.get("errors", 0) + g.get("errors", 0)}))
PY
}

# DYNAKV names another dynakv binary to run (e.g. an earlier build, to
# compare); by default this tree's release build, built first.
DYNAKV=${DYNAKV:-}
NODES=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003

# start_dynakv MODE RUN [tls]: 3 nodes with their data under RUN; sets
# client_tls to the bench's TLS options. Fails if they do not answer.
start_dynakv() {
    local mode=$1 run=$2 tls=${3:-}
    rm -rf "$run"
    client_tls=()
    if [ -n "$tls" ]; then
        [ -f "$WORK/certs/ca.pem" ] || "$DYNAKV" certs init "$WORK/certs" >/dev/null
        client_tls=(--tls-ca "$WORK/certs/ca.pem")
    fi
    for i in 1 2 3; do
        local env=(DYNAKV__NODE__DATA_DIR="$run/node$i" DYNAKV__STORAGE__FSYNC="$mode"
                   DYNAKV__LOG__LEVEL=warn)
        if [ -n "$tls" ]; then
            env+=(DYNAKV__TLS__CERT="$WORK/certs/node$i.pem" DYNAKV__TLS__KEY="$WORK/certs/node$i-key.pem"
                  DYNAKV__TLS__CA="$WORK/certs/ca.pem")
        fi
        env "${env[@]}" "$DYNAKV" serve -c "$ROOT/conf/local/node$i.toml" 2>"$run.$i.log" &
        PIDS+=($!)
    done
    wait_for "$DYNAKV" put peers-ready yes --node 127.0.0.1:7001 "${client_tls[@]}"
}

# run_dynakv MODE [tls]
run_dynakv() {
    local mode=$1 tls=${2:-}
    local label="fsync=$mode${tls:+ tls}" run="$WORK/dynakv-$mode${tls:+-tls}"
    say "dynakv, 3 nodes, $label"
    start_dynakv "$mode" "$run" "$tls" ||
        { say "skipping dynakv $label: the cluster did not answer"; stop_all; return 0; }
    local common=(--node "$NODES" --clients "$CLIENTS" --duration "${DURATION}s"
                  --value-size "$VALUE_SIZE" --keys "$KEYS" --json "${client_tls[@]}")
    local put get
    put=$("$DYNAKV" bench "${common[@]}" --mix put=100 --preload)
    get=$("$DYNAKV" bench "${common[@]}" --mix get=100)
    record dynakv "$label" "$put" "$get"
    stop_all
}

# BESIDE=1: instead of the comparison, dynakv (fsync periodic) serves
# VALUE_SIZE-byte gets alone, then beside BIG_CLIENTS clients putting
# BIG_SIZE-byte values (1 MiB by default) to keys of their own namespace,
# ROUNDS times; prints the gets' p99 each way and their ratio. BIG_RATE
# offers the big puts at that many a second in all (default: as fast as
# they are answered).
BESIDE=${BESIDE:-0}
BIG_SIZE=${BIG_SIZE:-1048576}
BIG_CLIENTS=${BIG_CLIENTS:-4}
BIG_RATE=${BIG_RATE:-}

run_beside() {
    say "dynakv, 3 nodes: $VALUE_SIZE-byte gets alone and beside $BIG_SIZE-byte puts"
    start_dynakv periodic "$WORK/dynakv-beside" || { say "the cluster did not answer"; exit 1; }
    "$DYNAKV" ns create big --node 127.0.0.1:7001 >/dev/null
    local common=(--node "$NODES" --clients "$CLIENTS" --duration "${DURATION}s"
                  --value-size "$VALUE_SIZE" --keys "$KEYS" --json)
    "$DYNAKV" bench "${common[@]}" --mix put=100 --preload >/dev/null
    local p99='import json, sys; r = json.load(sys.stdin)["ops"]; print(r[sys.argv[1]]["latency_us"]["p99"] / 1000, r[sys.argv[1]]["ops_per_sec"])'
    for round in $(seq "$ROUNDS"); do
        local alone beside big
        alone=$("$DYNAKV" bench "${common[@]}" --mix get=100 | python3 -c "$p99" get)
        "$DYNAKV" bench --node "$NODES" --ns big --clients "$BIG_CLIENTS" --value-size "$BIG_SIZE" \
            --keys 1000 --duration "$((DURATION + 4))s" --mix put=100 --json \
            ${BIG_RATE:+--rate "$BIG_RATE"} >"$WORK/big.json" &
        local big_pid=$!
        sleep 2
        beside=$("$DYNAKV" bench "${common[@]}" --mix get=100 | python3 -c "$p99" get)
        wait "$big_pid"
        big=$(python3 -c "$p99" put <"$WORK/big.json")
        python3 - "$round" "$alone" "$beside" "$big" <<'PY'
import sys
r, (a, ar), (b, br), (p, pr) = sys.argv[1], *(s.split() for s in sys.argv[2:5])
print(f"round {r}: gets alone p99 {float(a):.2f} ms ({float(ar):.0f}/s); beside the big puts "
      f"p99 {float(b):.2f} ms ({float(br):.0f}/s): {float(b) / float(a):.2f}x; "
      f"big puts {float(pr):.0f}/s, p99 {float(p):.0f} ms")
PY
    done
    stop_all
}

run_etcd() {
    need etcd-server protobuf-compiler || { say "skipping etcd"; return 0; }
    say "building benches/etcd-load"
    cargo build -q --release --manifest-path "$ROOT/benches/etcd-load/Cargo.toml" \
        --target-dir "$ROOT/target/etcd-load"
    say "etcd, 3 members"
    local cluster=e1=http://127.0.0.1:2380,e2=http://127.0.0.1:2480,e3=http://127.0.0.1:2580
    local endpoints=127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579
    for i in 1 2 3; do
        local client=$((2279 + 100 * i)) peer=$((2280 + 100 * i))
        rm -rf "$WORK/etcd$i"
        etcd --name "e$i" --data-dir "$WORK/etcd$i" \
            --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
            --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token peers-bench \
            --log-level error 2>"$WORK/etcd$i.log" &
        PIDS+=($!)
    done
    # etcd answers /health with 200 once the member has a leader.
    for i in 1 2 3; do
        wait_for http_ok "http://127.0.0.1:$((2279 + 100 * i))/health" ||
            { say "skipping etcd: member e$i did not become healthy (log: $(tail -n 3 "$WORK/etcd$i.log"))"; stop_all; return 0; }
    done
    local load="$ROOT/target/etcd-load/release/etcd-load"
    local common=(--endpoints "$endpoints" --clients "$CLIENTS" --duration "$DURATION"
                  --value-size "$VALUE_SIZE" --keys "$KEYS")
    local put get
    put=$("$load" "${common[@]}" --op put --preload)
    get=$("$load" "${common[@]}" --op get)
    record etcd "3 members" "$put" "$get"
    stop_all
}

run_redis() {
    local mode=$1
    need redis-server redis-tools || { say "skipping redis"; return 0; }
    say "redis, one server, appendfsync $mode"
    rm -rf "$WORK/redis-$mode"
    mkdir -p "$WORK/redis-$mode"
    redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly yes \
        --appendfsync "$mode" --dir "$WORK/redis-$mode" --daemonize no \
        >"$WORK/redis-$mode.log" 2>&1 &
    PIDS+=($!)
    wait_for redis-cli -p 6390 ping || { say "skipping redis: no answer to ping"; stop_all; return 0; }
    local csv requests=$REDIS_REQUESTS
    if [ -z "$requests" ]; then
        # The probe: 100,000 requests of up to 1 KiB, fewer of larger
        # values (1,000 of 1 MiB), so that it takes seconds at any size.
        local probe=$(( 100000 * 1024 / (VALUE_SIZE > 1024 ? VALUE_SIZE : 1024) ))
        [ "$probe" -lt 1000 ] && probe=1000
        csv=$(redis-benchmark -h 127.0.0.1 -p 6390 -c "$CLIENTS" -n "$probe" \
            -d "$VALUE_SIZE" -r "$KEYS" -t set --csv 2>/dev/null)
        requests=$(python3 - "$csv" "$DURATION" "$probe" <<'PY'
import csv, io, sys
rate = float(next(csv.DictReader(io.StringIO(sys.argv[1])))["rps"])
print(max(int(sys.argv[3]), int(rate * float(sys.argv[2]))))
PY
)
    fi
    csv=$(redis-benchmark -h 127.0.0.1 -p 6390 -c "$CLIENTS" -n "$requests" \
        -d "$VALUE_SIZE" -r "$KEYS" -t set,get --csv 2>/dev/null)
    python3 - "$mode" "$csv" "$VALUE_SIZE" "$KEYS" <<'PY' | tee -a "$RESULTS" >&2
import csv, io, json, sys
mode, text = sys.argv[1], sys.argv[2]
rows = {r["test"]: r for r in csv.DictReader(io.StringIO(text))}
s, g = rows["SET"], rows["GET"]
print(json.dumps({"system": "redis", "mode": f"appendfsync {mode}",
                  "size": int(sys.argv[3]), "keys": int(sys.argv[4]),
                  "put": float(s["rps"]), "get": float(g["rps"]),
                  "p99_put_ms": float(s["p99_latency_ms"]), "p99_get_ms": float(g["p99_latency_ms"]),
                  "errors": 0}))
PY
    stop_all
}

need python3 || { say "python3 is needed to read the results"; exit 1; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { say "ROUNDS must be a positive whole number, not '$ROUNDS'"; exit 1; }
if [ -z "$DYNAKV" ]; then
    say "building dynakv"
    cargo build -q --release -p dynakv-actors --manifest-path "$ROOT/Cargo.toml"
    DYNAKV="$ROOT/target/release/dynakv"
fi
[ -x "$DYNAKV" ] || { say "DYNAKV=$DYNAKV is not an executable"; exit 1; }
: >"$RESULTS"
if [ "$BESIDE" = 1 ]; then
    run_beside
    exit 0
fi
for round in $(seq "$ROUNDS"); do
    [ "$ROUNDS" -gt 1 ] && say "round $round of $ROUNDS"
    for mode in $MODES; do
        run_dynakv "$mode"
        [ "$TLS" = 1 ] && [ "$mode" = periodic ] && run_dynakv periodic tls
    done
    case " $PEERS " in *" etcd "*) run_etcd ;; esac
    case " $PEERS " in *" redis "*) for mode in $REDIS_MODES; do run_redis "$mode"; done ;; esac
done
[ -n "$RESULTS_OUT" ] && cat "$RESULTS" >>"$RESULTS_OUT"

python3 - "$RESULTS" "$CLIENTS" "$VALUE_SIZE" "$KEYS" "$DURATION" "$ROUNDS" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
clients, size, keys, duration, rounds = sys.argv[2:7]
# One row per system and mode: the median of its rounds (errors summed).
groups = {}
for r in runs:
    groups.setdefault((r["system"], r["mode"]), []).append(r)
rows = []
for (system, mode), rs in groups.items():
    row = {"system": system, "mode": mode, "errors": sum(r["errors"] for r in rs)}
    for k in ("put", "get", "p99_put_ms", "p99_get_ms"):
        row[k] = statistics.median(r[k] for r in rs)
    rows.append(row)
per = f"{duration} s per run" + (f", median of {rounds} rounds" if rounds != "1" else "")
print(f"\n{clients} clients, {size}-byte values, {keys} keys, {per}, loopback\n")
print(f"{'system':<8} {'mode':<22} {'put ops/s':>10} {'get ops/s':>10} {'p99 put':>9} {'p99 get':>9}")
for r in rows:
    print(f"{r['system']:<8} {r['mode']:<22} {r['put']:>10.0f} {r['get']:>10.0f} "
          f"{r['p99_put_ms']:>7.2f}ms {r['p99_get_ms']:>7.2f}ms"
          + (f"  ({r['errors']} errors)" if r["errors"] else ""))
mine = {r["mode"]: r for r in rows if r["system"] == "dynakv"}
periodic = mine.get("fsync=periodic")
always = mine.get("fsync=always")
print("\ndynakv's ratio to each peer (puts, gets):")
for r in rows:
    if r["system"] == "dynakv":
        continue
    line = f"  vs {r['system']} {r['mode']}:"
    if periodic:
        line += f" fsync=periodic {periodic['put'] / r['put']:.2f}x puts, {periodic['get'] / r['get']:.2f}x gets"
    if always:
        line += f"; fsync=always {always['put'] / r['put']:.2f}x puts"
    print(line)
tls = mine.get("fsync=periodic tls")
if periodic and tls:
    print(f"\nTLS's cost (fsync=periodic, TLS on / off): {tls['put'] / periodic['put']:.2f}x puts, "
          f"{tls['get'] / periodic['get']:.2f}x gets, p99 {tls['p99_put_ms'] / periodic['p99_put_ms']:.2f}x puts, "
          f"{tls['p99_get_ms'] / periodic['p99_get_ms']:.2f}x gets")
    pt = groups.get(("dynakv", "fsync=periodic tls"), [])
    if len(pt) > 1:
        print("  round by round, puts: " + " ".join(f"{t['put'] / p['put']:.2f}x" for t, p in zip(pt, groups[("dynakv", "fsync=periodic")])))
# Each round runs the systems minutes apart, so a round's own ratio is the
# one least moved by the machine's drift; show them all.
paired = groups.get(("dynakv", "fsync=periodic"), [])
if len(paired) > 1 and any(system != "dynakv" for system, _ in groups):
    print("\nfsync=periodic puts to each peer's, round by round:")
    for (system, mode), rs in groups.items():
        if system != "dynakv":
            ratios = " ".join(f"{d['put'] / p['put']:.2f}x" for d, p in zip(paired, rs))
            print(f"  vs {system} {mode}: {ratios}")
PY
