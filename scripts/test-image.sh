#!/usr/bin/env bash
# Build the container backend's test image (localhost/berth-test:bookworm) from a debootstrap rootfs.
#
#   bash scripts/test-image.sh            (as root; prints the image name)
#
# Images cannot be pulled on the test machines, so the image is made here: Debian bookworm minbase with
# python3 (bash comes with minbase) and the Remote Desktop's stack (Xvnc from tigervnc-standalone-server,
# openbox, xterm), and nothing of berth's: no git, no ssh (the SSH tests prove an image needs only sh + libc
# for berth's own dropbear). The host's CA bundle is copied
# in so that https through this host's proxy (package installs) is trusted inside as it is outside.
# Idempotent and cached: the image is rebuilt only when missing or when the recipe below changes; the rootfs
# tarball is kept under BERTH_TEST_IMAGE_CACHE (default /var/cache/berth/test-image) and never committed.
# Exits non-zero, saying why, when the image cannot be made (the tests fail on that rather than skip).
set -euo pipefail

IMAGE=${BERTH_TEST_IMAGE:-localhost/berth-test:bookworm}
CACHE=${BERTH_TEST_IMAGE_CACHE:-/var/cache/berth/test-image}
MIRROR=${BERTH_TEST_IMAGE_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
INCLUDE=python3,tigervnc-standalone-server,openbox,xterm
RECIPE_VERSION=2  # bump to rebuild everywhere
RECIPE=$(printf '%s|%s|%s|%s' "$RECIPE_VERSION" "$SUITE" "$INCLUDE" "$(sha256sum /etc/ssl/certs/ca-certificates.crt 2>/dev/null | cut -c1-16)" \
  | sha256sum | cut -c1-16)

die() { printf 'test-image.sh: ERROR: %s\n' "$*" >&2; exit 1; }
log() { printf 'test-image.sh: %s\n' "$*" >&2; }

[[ $(id -u) == 0 ]] || die "run as root (debootstrap and podman import need it)"
for tool in podman debootstrap tar; do
  command -v "$tool" >/dev/null || die "$tool is not installed (scripts/setup.sh installs it)"
done
mkdir -p "$CACHE"
chmod 0700 "$CACHE"
exec 9>"$CACHE/lock"
flock 9  # concurrent test runs build it once

if [[ $(podman image inspect --format '{{index .Labels "berth.test-image"}}' "$IMAGE" 2>/dev/null || true) == "$RECIPE" ]]; then
  echo "$IMAGE"
  exit 0
fi

TARBALL="$CACHE/rootfs-$RECIPE.tar"
if [[ ! -s $TARBALL ]]; then
  ROOTFS=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$ROOTFS"' EXIT
  log "debootstrap $SUITE (minbase + $INCLUDE) from $MIRROR"
  debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || die "debootstrap failed (see $CACHE/debootstrap.log): $(tail -3 "$CACHE/debootstrap.log")"
  if [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then
    mkdir -p "$ROOTFS/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
  fi
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  tar -C "$ROOTFS" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
  rm -rf "$ROOTFS"
  trap - EXIT
  find "$CACHE" -maxdepth 1 -name 'rootfs-*.tar' ! -name "rootfs-$RECIPE.tar" -delete  # older recipes
fi

log "importing $TARBALL as $IMAGE"
podman import --change "LABEL=berth.test-image=$RECIPE" --change 'CMD=["/bin/bash"]' "$TARBALL" "$IMAGE" >/dev/null \
  || die "podman import of $TARBALL failed"
echo "$IMAGE"
