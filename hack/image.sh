#!/usr/bin/env bash
# Builds the recac image without a container engine or a registry: a
# docker-archive tarball (what `docker save` writes: manifest.json, the image
# config, one tar per layer) that `ctr -n k8s.io images import` and
# `docker load` read. It is the Dockerfile's image, made another way:
#   layer 1: a Debian bookworm root filesystem from `mmdebstrap --variant=essential`
#            with the packages the Dockerfile's final stage installs (ca-certificates
#            git openssh-client make, read from the Dockerfile), without docs, man
#            pages, locales and apt lists, and the user recac (65532:65532, HOME=/workspace)
#   layer 2: the recac binary at /usr/local/bin/recac
#   config:  Entrypoint ["recac"], Cmd ["--help"], User 65532:65532,
#            Env HOME=/workspace, WorkingDir /workspace
#
#   hack/image.sh [BINARY]
#
#   BINARY / RECAC_BINARY  the recac binary (default target/release/recac; built with
#                          `cargo build --release -p recac` when that default is missing)
#   IMAGE                  the tag (default recac:dev)
#   RECAC_IMAGE_DIR        cache root (default $HOME/.cache/recac/image)
#
# The base layer is cached by the sha256 of the Dockerfile and this script; the
# archive by those and the binary's sha256 and IMAGE, so a second run takes
# seconds (the three newest archives are kept). Needs root (mmdebstrap's root mode) the first time, and installs
# mmdebstrap when missing. Progress and sizes go to stderr; the archive's
# absolute path is the last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
# shellcheck source=hack/lib-k8s.sh
. "$here/lib-k8s.sh"

log() { echo "image: $*" >&2; }

image="${IMAGE:-recac:dev}"
binary="${1:-${RECAC_BINARY:-}}"
cache_root="${RECAC_IMAGE_DIR:-$HOME/.cache/recac/image}"
dockerfile="$repo/Dockerfile"
suite=bookworm
mirror="http://deb.debian.org/debian"

if [ -z "$binary" ]; then
  binary="$repo/target/release/recac"
  if [ ! -x "$binary" ]; then
    log "no $binary: cargo build --release -p recac"
    (cd "$repo" && cargo build --release -p recac >&2)
  fi
fi
[ -x "$binary" ] || { log "no executable recac binary at $binary"; exit 1; }
binary="$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")"

# The packages of the Dockerfile's final stage (its `apt-get install` line), so
# both ways of building the image install the same ones.
packages="$(sed -n 's/.*apt-get install -y --no-install-recommends \([a-z0-9. +-]*[a-z0-9]\).*/\1/p' "$dockerfile" | tail -n 1)"
[ -n "$packages" ] || { log "found no apt-get install line in $dockerfile"; exit 1; }

sha() { sha256sum "$@" | cut -d' ' -f1; }
base_key="$(cat "$dockerfile" "$here/image.sh" | sha | cut -c1-16)"
bin_sha="$(sha "$binary")"
key="$(printf '%s\n%s\n%s\n' "$base_key" "$bin_sha" "$image" | sha | cut -c1-16)"
base="$cache_root/base-$base_key"
archive="$cache_root/recac-$key.tar"

human() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1"; }

report() {
  local info
  info="$(cat "$archive.info")"
  log "$image: $info"
  echo "$archive"
}

if [ -s "$archive" ] && [ -s "$archive.info" ]; then
  report
  exit 0
fi

mkdir -p "$cache_root"
work="$(mktemp -d "$cache_root/.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# tar_to FILE DIR ARGS...: a reproducible tar of DIR's ARGS.
tar_to() {
  local out="$1" dir="$2"
  shift 2
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu -C "$dir" -cf "$out" "$@"
}

# Layer 1, the base, once per Dockerfile/script version: the gzipped layer,
# its diff_id (sha256 of the uncompressed tar) and its uncompressed size.
if [ ! -s "$base/layer.tar.gz" ] || [ ! -s "$base/diff_id" ]; then
  [ "$(id -u)" -eq 0 ] || { log "building the base layer needs root (mmdebstrap's root mode)"; exit 1; }
  deb_need mmdebstrap
  log "building the base layer: Debian $suite with $packages"
  start=$SECONDS
  cat > "$work/hook.sh" <<'EOF'
set -eu
r="$1"
# The user of the Dockerfile's `useradd --uid 65532 --user-group --home-dir /workspace`.
echo 'recac:x:65532:65532::/workspace:/bin/sh' >> "$r/etc/passwd"
echo 'recac:x:65532:' >> "$r/etc/group"
if [ -f "$r/etc/shadow" ]; then echo 'recac:!:19000::::::' >> "$r/etc/shadow"; fi
mkdir -p "$r/workspace"
chown 65532:65532 "$r/workspace"
# Slimming: what dpkg's path-exclude did not keep out, caches, logs, apt's lists.
rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/* "$r"/usr/share/lintian \
  "$r"/usr/share/bash-completion "$r"/usr/share/gitweb
find "$r/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
  "$r"/var/lib/dpkg/*-old "$r"/var/log/* "$r"/tmp/* "$r"/root/.??* \
  "$r"/etc/passwd- "$r"/etc/group- "$r"/etc/shadow- "$r"/etc/gshadow-
# The host's, copied in by mmdebstrap: the container runtime provides both.
rm -f "$r/etc/resolv.conf" "$r/etc/hostname"
EOF
  mkdir -p "$base"
  # shellcheck disable=SC2086
  mmdebstrap --variant=essential --mode=root --format=tar \
    --include="$(echo $packages | tr ' ' ',')" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook="sh $work/hook.sh \"\$1\"" \
    --skip=output/dev \
    "$suite" "$work/base.tar" \
    "deb $mirror $suite main" \
    "deb $mirror $suite-updates main" \
    "deb http://deb.debian.org/debian-security $suite-security main" >&2
  sha "$work/base.tar" > "$work/diff_id"
  stat -c %s "$work/base.tar" > "$work/size"
  gzip -n -6 < "$work/base.tar" > "$work/layer.tar.gz"
  mv "$work/diff_id" "$work/size" "$base/"
  mv "$work/layer.tar.gz" "$base/layer.tar.gz"
  rm -f "$work/base.tar"
  log "base layer took $((SECONDS - start)) s: $(human "$(cat "$base/size")") ($(human "$(stat -c %s "$base/layer.tar.gz")") gzipped)"
fi

# The binary's shared libraries must be in the base.
if command -v readelf >/dev/null; then
  libs="$(gzip -dc "$base/layer.tar.gz" | tar -t | sed -n 's|.*/||p' | sort -u)"
  for lib in $(readelf -d "$binary" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
    grep -qxF "$lib" <<<"$libs" || { log "$binary needs $lib, which the base does not have"; exit 1; }
  done
fi

# Layer 2: the binary.
log "adding $binary ($(human "$(stat -c %s "$binary")"))"
mkdir -p "$work/root/usr/local/bin" "$work/archive"
install -m 0755 "$binary" "$work/root/usr/local/bin/recac"
tar_to "$work/bin.tar" "$work/root" usr
bin_diff_id="$(sha "$work/bin.tar")"
bin_size="$(stat -c %s "$work/bin.tar")"
base_diff_id="$(cat "$base/diff_id")"
base_size="$(cat "$base/size")"
mkdir -p "$work/archive/$base_diff_id" "$work/archive/$bin_diff_id"
ln "$base/layer.tar.gz" "$work/archive/$base_diff_id/layer.tar" 2>/dev/null || cp "$base/layer.tar.gz" "$work/archive/$base_diff_id/layer.tar"
gzip -n -6 < "$work/bin.tar" > "$work/archive/$bin_diff_id/layer.tar"
rm -f "$work/bin.tar"

arch="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
cat > "$work/config.json" <<EOF
{"architecture":"$arch","os":"linux","created":"$created","config":{"User":"65532:65532","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","HOME=/workspace"],"Entrypoint":["recac"],"Cmd":["--help"],"WorkingDir":"/workspace"},"rootfs":{"type":"layers","diff_ids":["sha256:$base_diff_id","sha256:$bin_diff_id"]},"history":[{"created":"$created","created_by":"hack/image.sh: mmdebstrap --variant=essential $suite with $packages, user 65532"},{"created":"$created","created_by":"hack/image.sh: COPY recac /usr/local/bin/recac"}]}
EOF
config_id="$(sha "$work/config.json")"
mv "$work/config.json" "$work/archive/$config_id.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar","%s/layer.tar"]}]\n' \
  "$config_id" "$image" "$base_diff_id" "$bin_diff_id" > "$work/archive/manifest.json"
tar --owner=0 --group=0 --numeric-owner --mtime=@0 --hard-dereference -C "$work/archive" -cf "$work/image.tar" manifest.json "$config_id.json" "$base_diff_id" "$bin_diff_id"

compressed="$(stat -c %s "$work/image.tar")"
uncompressed=$((base_size + bin_size))
echo "$(human "$compressed") compressed (the archive, gzipped layers), $(human "$uncompressed") uncompressed (layers), image id sha256:$config_id" > "$archive.info"
mv "$work/image.tar" "$archive"
# Prune: other bases, and archives but the newest three.
find "$cache_root" -mindepth 1 -maxdepth 1 -type d -name 'base-*' ! -name "base-$base_key" -exec rm -rf {} +
ls -t "$cache_root"/recac-*.tar | tail -n +4 | while read -r old; do rm -f "$old" "$old.info"; done
report
