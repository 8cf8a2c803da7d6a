#!/usr/bin/env bash
# Benchmarks a local dfs cluster against this machine's limits, in one run:
#   - `dfs bench` on a fresh `dfs up` cluster (release build, replication 3);
#   - the disk write limit: the file's bytes written three times to the same
#     disk under the datanodes' own write policy (below): three concurrent
#     writers, one file per chunk, O_DIRECT, one fsync at the end of each
#     chunk file;
#   - the disk read limit: the disk's aggregate read rate, the file's chunks
#     read back from those copies by READERS concurrent readers after the page
#     cache is dropped (a first read after a put comes from the datanodes'
#     disks), every reader's bytes counted;
#   - the network limit: one loopback TCP stream (iperf3), for the re-read
#     served from the datanodes' page cache.
# and prints each result as a ratio to its limit.
#
# Usage: scripts/bench.sh [SIZE]   (default 1GiB; e.g. scripts/bench.sh 256MiB)
# Env:   BENCH_DIR (default: a temp dir on the disk of /tmp), SMALL_FILES (2000),
#        BENCH_FLAGS (more `dfs bench` flags, e.g. --no-batching),
#        REREADS (3: page-cache re-reads of the large file; one 1 GiB re-read
#        lasts about 0.4 s, so the median of several is the figure compared),
#        CHUNK_MIB (64: the chunk size of `dfs up`'s coordinator, in MiB),
#        READERS (4: concurrent readers of the read limit, as many as the
#        client reads chunks in parallel, ClientConfig::concurrency),
#        DFS_BIN (a `dfs` binary to measure instead of this tree's release build),
#        SECURITY (both: a mutual-TLS cluster, then the same build with
#        --insecure, and the TLS cost of each operation; or tls, or insecure)
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE="${1:-1GiB}"
SMALL_FILES="${SMALL_FILES:-2000}"
REREADS="${REREADS:-3}"
SECURITY="${SECURITY:-both}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dfs-target}"

need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq "$2" >/dev/null; }; }
need iperf3 iperf3
export DEBIAN_FRONTEND=noninteractive

# DFS_BIN runs another build (e.g. an older commit's, for a before/after
# comparison in the same hour); by default the release build of this tree.
if [ -n "${DFS_BIN:-}" ]; then
  DFS="$DFS_BIN"
else
  cargo build --release -q -p dfs-cli --bin dfs
  DFS="$CARGO_TARGET_DIR/release/dfs"
fi

WORK="${BENCH_DIR:-$(mktemp -d /tmp/dfs-bench.XXXXXX)}"
mkdir -p "$WORK"
UP_PID=""
IPERF_PID=""
cleanup() {
  [ -n "$UP_PID" ] && kill "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null || true
  [ -n "$IPERF_PID" ] && kill "$IPERF_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

bytes=$(python3 - "$SIZE" <<'PY'
import re, sys
m = re.fullmatch(r"(\d+)\s*([KMGT]i?B?|B)?", sys.argv[1], re.I)
n, unit = int(m.group(1)), (m.group(2) or "B").upper()
mult = {"B":1,"K":1<<10,"KI":1<<10,"KIB":1<<10,"M":1<<20,"MI":1<<20,"MIB":1<<20,"G":1<<30,"GI":1<<30,"GIB":1<<30,"T":1<<40,"TIB":1<<40}
print(n * mult[unit])
PY
)
CHUNK_MIB="${CHUNK_MIB:-64}"
READERS="${READERS:-4}"
file_mib=$(( (bytes + (1 << 20) - 1) >> 20 ))
chunks=$(( (file_mib + CHUNK_MIB - 1) / CHUNK_MIB ))
chunk_mib() { # $1: chunk index -> its size in MiB (the last one may be short)
  local rest=$(( file_mib - $1 * CHUNK_MIB ))
  echo $(( rest < CHUNK_MIB ? rest : CHUNK_MIB ))
}

# Disk write limit, under the datanodes' write policy (datanode/src/staged.rs
# and ChunkWriter::finish in datanode/src/store.rs): every chunk is its own
# file, written with O_DIRECT in 1 MiB aligned pieces (STAGE_BYTES), then
# fsynced once at its end (sync_all), renamed into place and its directory
# fsynced; no sync in between. With replication 3 on one machine the three
# replicas of each chunk are written at the same time by three datanodes to
# this one disk. So: three concurrent writers (one directory each), each
# writing the file's chunks one after another as CHUNK_MIB files with
# `dd bs=1M oflag=direct conv=fsync` (one fsync at the end of each file).
# (Until 2026-12-01 this limit was `dd bs=64M oflag=direct,dsync`: one
# growing file per writer, synced after every 64 MiB write. That is not the
# datanodes' policy and measured 1.2-1.6x lower here (425-509 against
# 514-740 MiB/s, seconds apart), a limit that flattered the put's ratio. The
# read limit was three O_DIRECT readers of 64 MiB blocks, 1.2-1.4x below the
# datanodes' own read pattern (below); docs/performance.md has the figures.)
write_copy() { # $1: copy number
  local dir="$WORK/disk-$1" k
  mkdir -p "$dir"
  for (( k = 0; k < chunks; k++ )); do
    dd if=/dev/zero of="$dir/chunk-$k" bs=1M count="$(chunk_mib "$k")" \
      oflag=direct conv=fsync status=none
  done
}
echo "== disk write limit: 3 concurrent copies of $SIZE as $chunks chunk files of <= $CHUNK_MIB MiB (O_DIRECT, one fsync per file)"
start=$(date +%s.%N)
for i in 1 2 3; do write_copy "$i" & done
wait
end=$(date +%s.%N)
write_secs=$(python3 -c "print($end - $start)")

# Disk read limit: the disk's aggregate read rate for the file's chunks, read
# the way the cluster reads a file the first time: the client reads READERS
# chunks at a time, each from one replica (replicas are spread over the
# datanodes by a per-chunk hash), and a datanode reads a chunk from its disk
# through the page cache, asking for the whole range ahead (WILLNEED) and
# then reading it in 256 KiB blocks (ChunkReader::read_range in
# datanode/src/store.rs).
# So: chunk k is read from copy k mod 3; READERS concurrent readers take
# chunks r, r + READERS, ... one after another, each with WILLNEED over the
# file and 256 KiB reads; the page cache is dropped first (sync; echo 3 >
# /proc/sys/vm/drop_caches) so every byte comes from the disk. The limit is
# all readers' bytes (the whole file) over the time the last one needs.
sync
if ! { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then
  echo "warning: cannot drop the page cache (not root?); the read limit may count cached bytes" >&2
fi
echo "== disk read limit: $SIZE ($chunks chunk files) read by $READERS concurrent readers, page cache dropped"
read_secs=$(python3 - "$WORK" "$chunks" "$READERS" <<'PY'
import os, sys, threading, time
work, chunks, readers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def reader(r):
    buf = bytearray(256 << 10)
    for k in range(r, chunks, readers):
        fd = os.open(f"{work}/disk-{k % 3 + 1}/chunk-{k}", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            off = 0
            while (n := os.preadv(fd, [buf], off)) > 0:
                off += n
        finally:
            os.close(fd)
threads = [threading.Thread(target=reader, args=(r,)) for r in range(readers)]
start = time.monotonic()
for t in threads:
    t.start()
for t in threads:
    t.join()
print(time.monotonic() - start)
PY
)
rm -rf "$WORK"/disk-*

echo "== network limit: one loopback TCP stream (iperf3, 5 s)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
iperf3 -s -B 127.0.0.1 -p "$port" -1 >/dev/null 2>&1 &
IPERF_PID=$!
sleep 0.5
tcp_bps=$(iperf3 -c 127.0.0.1 -p "$port" -t 5 -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8)')

# One fresh `dfs up` cluster per security mode, one after the other on the
# same machine and build: `tls` (the default, mutual TLS on every hop) and
# `insecure` (`dfs up --insecure`, plain text), so their figures compare.
bench_cluster() { # mode → $WORK/bench-<mode>.json
  local mode="$1" flags=()
  [ "$mode" = insecure ] && flags=(--insecure)
  echo "== dfs cluster (dfs up ${flags[*]:-}, 3 datanodes, replication 3) in $WORK/cluster-$mode"
  "$DFS" up --data-dir "$WORK/cluster-$mode" --listen 127.0.0.1:0 "${flags[@]}" >"$WORK/up.out" 2>"$WORK/up.err" &
  UP_PID=$!
  for _ in $(seq 1 300); do
    grep -q '^coordinator endpoint:' "$WORK/up.out" 2>/dev/null && break
    sleep 0.2
  done
  endpoint=$(sed -n 's/^coordinator endpoint: \([^ ]*\).*/\1/p' "$WORK/up.out")
  [ -n "$endpoint" ] || { echo "dfs up did not start:"; cat "$WORK/up.err"; exit 1; }
  credentials=$(sed -n 's/^client credentials: \([^ ]*\).*/\1/p' "$WORK/up.out")
  local cred_flags=()
  [ -n "$credentials" ] && cred_flags=(--credentials "$credentials")

  echo "== dfs bench --size $SIZE --small-files $SMALL_FILES ($mode)"
  # shellcheck disable=SC2086  # BENCH_FLAGS is a list of flags
  "$DFS" --coordinator "$endpoint" "${cred_flags[@]}" bench --size "$SIZE" --small-files "$SMALL_FILES" --rereads "$REREADS" ${BENCH_FLAGS:-} --json >"$WORK/bench-$mode.json"
  kill "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null || true
  UP_PID=""
  rm -rf "$WORK/cluster-$mode"
}

case "$SECURITY" in
  both) bench_cluster tls; bench_cluster insecure; main_mode=tls ;;
  tls|insecure) bench_cluster "$SECURITY"; main_mode="$SECURITY" ;;
  *) echo "SECURITY must be both, tls or insecure (got $SECURITY)" >&2; exit 2 ;;
esac

python3 - "$WORK/bench-$main_mode.json" "$(( file_mib << 20 ))" "$write_secs" "$tcp_bps" "$read_secs" "$READERS" "$CHUNK_MIB" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
size, write_secs, tcp, read_secs = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
readers, chunk_mib = int(sys.argv[6]), int(sys.argv[7])
disk_limit = size / write_secs  # bytes/s of the file when its 3 replicas are written like the datanodes do
read_limit = size / read_secs  # the disk's aggregate read rate: the file's chunks by `readers` readers
mib = lambda b: f"{b / (1 << 20):8.1f} MiB/s"
print()
print(f"limit: 3 copies, O_DIRECT, fsync per {chunk_mib} MiB chunk file -> {mib(disk_limit)} of file data")
print(f"limit: one loopback TCP stream                      -> {mib(tcp)}")
print(f"limit: disk read, {readers} readers, page cache dropped      -> {mib(read_limit)} of file data")
print()
print(f"{'operation':<40} {'result':>14} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8}  ratio to limit")
for r in rows:
    op = r["operation"]
    ratio = ""
    if op.startswith("put") and r["ops"] <= 16 and r["bytes"] >= (64 << 20):
        ratio = f"{r['bytes_per_second'] / disk_limit:6.0%} of disk write limit (target >= 70%)"
    elif op.startswith("get") and r["bytes"] >= (64 << 20) and "first read" in op:
        ratio = f"{r['bytes_per_second'] / read_limit:6.0%} of disk read limit"
    elif op.startswith("get") and r["bytes"] >= (64 << 20) and r["ops"] <= 16:
        ratio = f"{r['bytes_per_second'] / tcp:6.0%} of loopback TCP (target >= 60%)"
    elif op.startswith("put"):
        ratio = "target >= 2000 ops/s, p99 < 50 ms"
    elif op.startswith("get"):
        ratio = "target >= 5000 ops/s"
    p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}"
    p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.2f}"
    print(f"{op:<40} {mib(r['bytes_per_second']):>14} {r['ops_per_second']:9.0f} {p50:>8} {p99:>8}  {ratio}")
rereads = sorted(r["bytes_per_second"] for r in rows
                 if r["operation"].startswith("get") and "re-read" in r["operation"])
if len(rereads) > 1:
    median = rereads[len(rereads) // 2]
    op = f"get re-read, median of {len(rereads)}"
    print(f"{op:<40} {mib(median):>14} {'':>9} {'':>8} {'':>8}  "
          f"{median / tcp:6.0%} of loopback TCP (target >= 60%)")
PY

if [ "$SECURITY" = both ]; then
  python3 - "$WORK/bench-tls.json" "$WORK/bench-insecure.json" <<'PY'
import json, sys
tls = {r["operation"]: r for r in json.load(open(sys.argv[1]))}
plain = {r["operation"]: r for r in json.load(open(sys.argv[2]))}
print()
print("TLS cost: the same build and machine, mutual TLS vs --insecure (same run)")
print(f"{'operation':<40} {'tls':>12} {'insecure':>12} {'tls/insecure':>13}  target")
for op, r in tls.items():
    p = plain.get(op)
    if p is None:
        continue
    small = r["bytes"] < (64 << 20) or r["ops"] > 16
    key = "ops_per_second" if small else "bytes_per_second"
    a, b = r[key], p[key]
    if small:
        fa, fb, target = f"{a:9.0f}/s", f"{b:9.0f}/s", ">= 80%"
    else:
        fa, fb, target = f"{a / (1 << 20):7.1f} MiB/s", f"{b / (1 << 20):7.1f} MiB/s", ">= 85%"
    ratio = a / b if b else float("nan")
    print(f"{op:<40} {fa:>12} {fb:>12} {ratio:12.0%}  {target}")
PY
fi
