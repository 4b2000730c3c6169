#!/usr/bin/env bash
# Build roost-serving and roost-operator from the Dockerfiles without a Docker engine:
# Debian's daemonless buildah, on a local base made with debootstrap that stands in for
# python:3.11-slim-bookworm (same Debian release; Debian's python3 with a `python` link, as the
# official image has). Not part of `make test`; `make images` runs it. Needs root and apt.
#
#   hack/build-images.sh            # builds localhost/roost-serving:dev, localhost/roost-operator:dev
#   IMAGE_TAG=0.1.0 hack/build-images.sh
set -euo pipefail

cd "$(dirname "$0")/.."
TAG="${IMAGE_TAG:-dev}"
BASE="localhost/python:3.11-bookworm-local"
ROOTFS="${ROOTFS:-${HOME}/.cache/roost/rootfs-python3.11-bookworm}"
B=(buildah --storage-driver vfs)
log() { printf '[images %(%H:%M:%S)T] %s\n' -1 "$*"; }

if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  log "installing buildah and debootstrap (apt)"
  apt-get update -qq && apt-get install -y -qq buildah debootstrap >/dev/null
fi

if ! "${B[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
  if [[ ! -x "$ROOTFS/usr/bin/python3" ]]; then
    log "debootstrap bookworm (minbase + python3) into $ROOTFS"
    rm -rf "$ROOTFS"
    debootstrap --variant=minbase --include=ca-certificates,python3,python3-venv,python3-pip \
      bookworm "$ROOTFS" >/dev/null
  fi
  ln -sf python3 "$ROOTFS/usr/bin/python"
  # Registries are reached through a TLS proxy whose CA is in the host bundle.
  cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
  c=$("${B[@]}" from scratch)
  "${B[@]}" copy "$c" "$ROOTFS/" / >/dev/null
  "${B[@]}" commit -q "$c" "$BASE" >/dev/null
  "${B[@]}" rm "$c" >/dev/null
  log "base image $BASE committed"
fi

revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
for component in serving operator; do
  log "building roost-$component:$TAG (Dockerfile.$component, base $BASE)"
  "${B[@]}" bud --pull=never --isolation chroot --quiet \
    --build-arg "BASE_IMAGE=$BASE" --build-arg "REVISION=$revision" \
    -f "Dockerfile.$component" -t "roost-$component:$TAG" . >/dev/null
done

# Smoke: the entrypoints run as the image's numeric user.
for component in serving operator; do
  c=$("${B[@]}" from --pull=never "roost-$component:$TAG")
  cmd=roost
  [[ $component == operator ]] && cmd=roost-operator
  "${B[@]}" run --isolation chroot "$c" -- sh -c "id -u && $cmd --help >/dev/null" |
    sed "s/^/[images] roost-$component runs as uid /"
  "${B[@]}" rm "$c" >/dev/null
done
"${B[@]}" images --filter reference='roost-*'
