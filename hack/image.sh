#!/usr/bin/env bash
# Builds the recac image without a container engine or a registry: a
# docker-archive tarball (what `docker save` writes: manifest.json, the image
# config, one tar per layer) that `ctr -n k8s.io images import` and
# `docker load` read. It is the image of one of the Dockerfile's final stages (the
# variant), made another way:
#   layer 1: a Debian root filesystem from `mmdebstrap --variant=essential`: the
#            release of the stage's base image (debian:bookworm-slim: bookworm) with
#            the packages its `apt-get install` line installs (both read from the
#            Dockerfile), without docs, man pages, locales and apt lists, and the user
#            recac (65532:65532, HOME=/workspace)
#   layer 2: the recac binary at /usr/local/bin/recac
#   config:  Entrypoint ["recac"], Cmd ["--help"], User 65532:65532,
#            Env HOME=/workspace, WorkingDir /workspace
#
#   hack/image.sh [BINARY]
#
#   BINARY / RECAC_BINARY  the recac binary (default target/release/recac; built with
#                          `cargo build --release -p recac` when that default is missing)
#   IMAGE_VARIANT          the Dockerfile stage: `default` (git, make, ssh; Debian 12) or
#                          `toolchains` (also cargo, go, node/npm, python3 with pytest;
#                          Debian 13); see docs/agent.md#toolchains
#   IMAGE                  the tag (default recac:dev, recac:dev-toolchains for the variant)
#   RECAC_IMAGE_DIR        cache root (default $HOME/.cache/recac/image)
#
# The base layer is cached per variant by the sha256 of its release, its package
# list and this script (base-KEY, base-toolchains-KEY); the archive by those and
# the binary's sha256 and IMAGE, so a second run takes seconds (the three newest
# archives of each variant are kept; other variants' files are never removed).
# Needs root (mmdebstrap's root mode) the first time, and installs mmdebstrap
# when missing. Progress and sizes go to stderr; the archive's absolute path is
# the last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
# shellcheck source=hack/lib-k8s.sh
. "$here/lib-k8s.sh"

log() { echo "image: $*" >&2; }

variant="${IMAGE_VARIANT:-default}"
case "$variant" in
  default) image="${IMAGE:-recac:dev}"; infix="" ;;
  toolchains) image="${IMAGE:-recac:dev-toolchains}"; infix="toolchains-" ;;
  *) log "IMAGE_VARIANT=$variant: expected default or toolchains"; exit 1 ;;
esac
binary="${1:-${RECAC_BINARY:-}}"
cache_root="${RECAC_IMAGE_DIR:-$HOME/.cache/recac/image}"
dockerfile="$repo/Dockerfile"
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

# The variant's stage of the Dockerfile (`FROM ${ARG} AS <variant>`): the Debian
# release of its base image (the ARG's default, debian:<release>-slim) and the
# packages of its `apt-get install` line, so both ways of building the image
# install the same ones.
stage_text="$(awk -v stage="$variant" '
  /^FROM / { in_stage = (tolower($(NF-1)) == "as" && $NF == stage) }
  in_stage { print }
' "$dockerfile")"
[ -n "$stage_text" ] || { log "found no stage \`FROM ... AS $variant\` in $dockerfile"; exit 1; }
base_arg="$(sed -n '1s/^FROM \${\([A-Z_]*\)}.*/\1/p' <<<"$stage_text")"
base_image="$(sed -n "s/^ARG $base_arg=\(.*\)/\1/p" "$dockerfile" | head -n 1)"
suite="$(sed -n 's/^debian:\([a-z]*\)-slim$/\1/p' <<<"$base_image")"
[ -n "$suite" ] || { log "stage $variant: base image \`${base_image:-?}\` (ARG ${base_arg:-?}) is not debian:<release>-slim"; exit 1; }
packages="$(sed -n 's/.*apt-get install -y --no-install-recommends \([a-z0-9. +-]*[a-z0-9]\).*/\1/p' <<<"$stage_text" | tail -n 1)"
[ -n "$packages" ] || { log "found no apt-get install line in stage $variant of $dockerfile"; exit 1; }

sha() { sha256sum "$@" | cut -d' ' -f1; }
base_key="$( (printf '%s\n%s\n%s\n' "$variant" "$suite" "$packages"; cat "$here/image.sh") | sha | cut -c1-16)"
bin_sha="$(sha "$binary")"
key="$(printf '%s\n%s\n%s\n' "$base_key" "$bin_sha" "$image" | sha | cut -c1-16)"
base="$cache_root/base-$infix$base_key"
archive="$cache_root/recac-$infix$key.tar"

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
  log "building the base layer ($variant): Debian $suite with $packages"
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
{"architecture":"$arch","os":"linux","created":"$created","config":{"User":"65532:65532","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","HOME=/workspace"],"Entrypoint":["recac"],"Cmd":["--help"],"WorkingDir":"/workspace"},"rootfs":{"type":"layers","diff_ids":["sha256:$base_diff_id","sha256:$bin_diff_id"]},"history":[{"created":"$created","created_by":"hack/image.sh ($variant): mmdebstrap --variant=essential $suite with $packages, user 65532"},{"created":"$created","created_by":"hack/image.sh: COPY recac /usr/local/bin/recac"}]}
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
# Prune this variant's files only: its other bases, and its archives but the
# newest three. Keys are 16 hex digits: the default variant's names have no infix.
if [ -z "$infix" ]; then
  key_glob='????????????????'
else
  key_glob="$infix????????????????"
fi
find "$cache_root" -mindepth 1 -maxdepth 1 -type d -name "base-$key_glob" ! -name "base-$infix$base_key" -exec rm -rf {} +
# shellcheck disable=SC2012
ls -t "$cache_root"/recac-$key_glob.tar | tail -n +4 | while read -r old; do rm -f "$old" "$old.info"; done
report
