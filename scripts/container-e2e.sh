#!/usr/bin/env bash
# Container end-to-end test of the dfs image (CI runs it after build-image.sh):
#   - an --internal user-defined Docker network (no traffic leaves it),
#   - one coordinator and three datanode containers (each its own --host label,
#     read-only root file system, all capabilities dropped, no-new-privileges,
#     uid 65532), data on named volumes,
#   - `dfs put` of a random multi-chunk file and `dfs get` back through the CLI
#     running in a container on the same network; byte-identical; every chunk on
#     3 distinct datanodes,
#   - a corrupted replica on one datanode is caught by its scrubber
#     (dfs_datanode_checksum_failures_total) and reads stay byte-identical,
#   - /healthz, /readyz and /metrics of every container, scraped from the host
#     over the container's address on that network; the scrapes are kept in
#     $DFS_E2E_SCRAPE_DIR for tests/packaging/check_metric_names.py,
#   - everything is removed on exit (trap), on success and on failure.
#
# Env: DFS_E2E_IMAGE (default dfs:local), DFS_E2E_SCRAPE_DIR (default: a temp
# dir, removed unless set), DFS_E2E_KEEP=1 keeps containers for debugging.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

image="${DFS_E2E_IMAGE:-$DFS_IMAGE:local}"
docker image inspect "$image" >/dev/null 2>&1 || die "image $image not found: run scripts/build-image.sh first"

p="dfs-e2e-$$"
net="$p-net"
work="$(mktemp -d)"
scrape_dir="${DFS_E2E_SCRAPE_DIR:-$work/scrapes}"
mkdir -p "$scrape_dir"
containers=()
volumes=()

cleanup() {
  local rc=$?
  if (( rc != 0 )); then
    echo "---- container e2e failed (exit $rc): last logs ----" >&2
    for c in "${containers[@]}"; do
      echo "---- $c" >&2
      docker logs --tail 30 "$c" 2>&1 | sed 's/^/    /' >&2 || true
    done
  fi
  if [[ "${DFS_E2E_KEEP:-0}" == 1 ]]; then
    echo "DFS_E2E_KEEP=1: left ${containers[*]} on $net" >&2
    return
  fi
  (( ${#containers[@]} )) && docker rm -f -v "${containers[@]}" >/dev/null 2>&1 || true
  (( ${#volumes[@]} )) && docker volume rm -f "${volumes[@]}" >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$work"
  # Nothing of this run may be left behind.
  local left
  left="$(docker ps -a --filter "name=$p" --format '{{.Names}}'; docker volume ls -q --filter "name=$p"; docker network ls -q --filter "name=$p")"
  if [[ -n "$left" ]]; then echo "error: left behind: $left" >&2; exit 1; fi
}
trap cleanup EXIT

hardened=(--read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges --user 65532:65532)

run_service() { # name volume args...
  local name="$1" vol="$2"; shift 2
  docker volume create "$vol" >/dev/null; volumes+=("$vol")
  containers+=("$name")
  docker run -d --name "$name" --hostname "$name" --network "$net" "${hardened[@]}" \
    -v "$vol:/var/lib/dfs" -e RUST_LOG=info "$image" "$@" >/dev/null
}

dfs_cli() { # CLI in a throwaway container on the network; stdin/stdout pass through
  docker run --rm -i --network "$net" "${hardened[@]}" "$image" \
    dfs --coordinator "http://$p-coordinator:7000" "$@"
}

ip_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$1"; }

http_get() { # url → body on stdout; fails on non-2xx
  python3 - "$1" <<'PY'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    sys.stdout.write(r.read().decode())
PY
}

log "network $net (internal)"
docker network create --internal "$net" >/dev/null

log "coordinator + 3 datanodes from $image"
run_service "$p-coordinator" "$p-coordinator-data" dfs-coordinator \
  --listen 0.0.0.0:7000 --data-dir /var/lib/dfs --metrics-addr 0.0.0.0:9100 \
  --replication 3 --heartbeat-interval 1s --dead-after 30s --insecure
for i in 1 2 3; do
  run_service "$p-dn$i" "$p-dn$i-data" dfs-datanode \
    --listen 0.0.0.0:7101 --advertise "http://$p-dn$i:7101" \
    --coordinator "http://$p-coordinator:7000" --data-dir /var/lib/dfs \
    --metrics-addr 0.0.0.0:9101 --host "dn$i" --zone "zone-$i" \
    --capacity 4GiB --heartbeat-interval 1s --scrub-interval 2s --insecure
done

log "waiting for 3 healthy datanodes"
healthy=0
for _ in $(seq 1 60); do
  healthy="$(dfs_cli nodes --json 2>/dev/null | python3 -c 'import json,sys; print(sum(n["state"]=="healthy" for n in json.load(sys.stdin)))' 2>/dev/null || echo 0)"
  [[ "$healthy" == 3 ]] && break
  sleep 1
done
[[ "$healthy" == 3 ]] || { dfs_cli nodes || true; die "only $healthy of 3 datanodes became healthy"; }

log "put / get a 9 MiB random file in 1 MiB chunks"
head -c $((9 * 1024 * 1024 + 12345)) /dev/urandom > "$work/in.bin"
dfs_cli put --chunk-size 1MiB - /e2e/blob.bin < "$work/in.bin"
dfs_cli get /e2e/blob.bin - > "$work/out.bin"
cmp "$work/in.bin" "$work/out.bin" || die "downloaded file differs from the uploaded one"
sha="$(sha256sum < "$work/in.bin" | cut -c1-16)"
log "byte-identical (sha256 $sha…)"

dfs_cli stat --json /e2e/blob.bin > "$work/stat.json"
python3 - "$work/stat.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
chunks = s["chunks"]
assert len(chunks) == 10, f"expected 10 chunks, got {len(chunks)}"
for c in chunks:
    assert len(set(c["replicas"])) == 3, f"chunk {c['index']} has replicas {c['replicas']}, want 3 distinct"
print(f"    {len(chunks)} chunks, each on 3 distinct datanodes")
PY

log "corrupting one replica on dn1; the scrubber must catch it"
chunk_id="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["chunks"][0]["id"])' "$work/stat.json")"
dn1_dir="$(docker volume inspect -f '{{.Mountpoint}}' "$p-dn1-data")"
chunk_file="$dn1_dir/chunks/${chunk_id:0:2}/$chunk_id"
[[ -f "$chunk_file" ]] || die "replica file $chunk_file not found on dn1's volume"
python3 - "$chunk_file" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(1000); b = f.read(1); f.seek(1000); f.write(bytes([b[0] ^ 0xFF]))
PY
dn1_ip="$(ip_of "$p-dn1")"
failures=0
for _ in $(seq 1 60); do
  failures="$(http_get "http://$dn1_ip:9101/metrics" | awk '/^dfs_datanode_checksum_failures_total/ { s += $NF } END { print s + 0 }')"
  [[ "$failures" != 0 ]] && break
  sleep 1
done
[[ "$failures" != 0 ]] || die "dn1 did not report the corrupted replica (dfs_datanode_checksum_failures_total stayed 0)"
dfs_cli get /e2e/blob.bin - > "$work/out2.bin"
cmp "$work/in.bin" "$work/out2.bin" || die "read after corruption differs from the uploaded file"
log "checksum failure counted ($failures); reads still byte-identical"

log "probes and /metrics of every container"
for c in "$p-coordinator" "$p-dn1" "$p-dn2" "$p-dn3"; do
  port=9101; role="${c##*-}"; [[ "$role" == coordinator ]] && port=9100
  ip="$(ip_of "$c")"
  http_get "http://$ip:$port/healthz" >/dev/null || die "$c /healthz failed"
  http_get "http://$ip:$port/readyz" >/dev/null || die "$c /readyz failed"
  http_get "http://$ip:$port/metrics" > "$scrape_dir/$role.prom"
  n="$(grep -c '^dfs_' "$scrape_dir/$role.prom" || true)"
  (( n > 0 )) || die "$c exported no dfs_ samples"
  echo "    $c: /healthz /readyz ok, $n dfs samples"
done
grep -q '^dfs_coordinator_files 1$' "$scrape_dir/coordinator.prom" || die "coordinator does not count the uploaded file"
grep -q '^dfs_coordinator_datanodes{state="healthy"} 3$' "$scrape_dir/coordinator.prom" || die "coordinator does not report 3 healthy datanodes"

containers_run=("${containers[@]}")
log "container e2e passed (${#containers_run[@]} service containers; scrapes in $scrape_dir)"
