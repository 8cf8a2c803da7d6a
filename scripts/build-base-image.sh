#!/usr/bin/env bash
# Builds the local runtime base image (default dfs-base:local) without pulling
# anything: a FROM-scratch root file system holding exactly the shared libraries
# the given binaries link against (found with ldd), CA certificates, an
# nsswitch.conf, a writable /tmp and a non-root user 65532 ("nonroot", like
# distroless). It stands in for gcr.io/distroless/cc-debian12:nonroot offline.
#
#   scripts/build-base-image.sh BINARY...
set -euo pipefail
source "$(dirname "$0")/lib.sh"

(( $# > 0 )) || die "usage: $0 BINARY... (the binaries whose libraries the base must carry)"
command -v docker >/dev/null || die "docker is not installed"

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT

# Every library (and the dynamic loader) any binary needs, with its real path.
declare -A libs=()
for bin in "$@"; do
  [[ -x "$bin" ]] || die "not an executable: $bin"
  while read -r path; do
    [[ -n "$path" ]] && libs["$path"]=1
  done < <(ldd "$bin" | awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }')
done
(( ${#libs[@]} > 0 )) || die "ldd found no libraries (static binaries need no base; use FROM scratch)"

for lib in "${!libs[@]}"; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
  # Keep the path the binaries ask for and the real file it links to.
  real="$(readlink -f "$lib")"
  if [[ "$real" != "$lib" ]]; then
    mkdir -p "$rootfs$(dirname "$real")"
    cp -L "$lib" "$rootfs$real"
  fi
done
# Debian's loader path is /lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/...;
# with usrmerge /lib is a link to /usr/lib: mirror that layout.
if [[ -L /lib && -d "$rootfs/lib" && ! -L "$rootfs/lib" ]]; then
  mkdir -p "$rootfs/usr/lib"
  cp -a "$rootfs/lib/." "$rootfs/usr/lib/"
  rm -rf "$rootfs/lib"
  ln -s usr/lib "$rootfs/lib"
fi

mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$rootfs/home/nonroot" "$rootfs/usr/local/bin"
chmod 1777 "$rootfs/tmp"
[[ -f /etc/ssl/certs/ca-certificates.crt ]] && cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
cat > "$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat > "$rootfs/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUP
echo 'hosts: files dns' > "$rootfs/etc/nsswitch.conf"
chown -R 0:0 "$rootfs"
chown 65532:65532 "$rootfs/home/nonroot"

tar --numeric-owner -C "$rootfs" -cf "$rootfs.tar" .
trap 'rm -rf "$rootfs" "$rootfs.tar"' EXIT
docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'USER 65532:65532' \
  --change 'WORKDIR /home/nonroot' \
  --message "dfs local runtime base (libraries of: $(basename -a "$@" | tr '\n' ' '))" \
  "$rootfs.tar" "$DFS_BASE_IMAGE" >/dev/null
log "built $DFS_BASE_IMAGE with ${#libs[@]} libraries: $(printf '%s ' "${!libs[@]}")"
