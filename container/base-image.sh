#!/usr/bin/env bash
# Make the Dockerfile's base image locally when no image registry is reachable.
#
#   container/base-image.sh [IMAGE]     (default localhost/debian:bookworm-slim)
#
# The Dockerfile's ARG BASE_IMAGE defaults to the public debian:bookworm-slim, so a build on a
# machine that reaches a registry needs none of this. Here (no registry), `make image` runs this
# script once: debootstrap's minimal Debian 12 (from apt's mirror over plain HTTP), the same apt
# sources and dpkg path excludes as the public slim image, imported with `podman import`.
set -euo pipefail
IMAGE=${1:-localhost/debian:bookworm-slim}
ENGINE=${CONTAINER_ENGINE:-podman}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if "$ENGINE" image exists "$IMAGE" 2>/dev/null; then
  exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is missing (apt-get install -y debootstrap)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root to make $IMAGE" >&2; exit 1; }

root=$(mktemp -d /var/tmp/recsys-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "making $IMAGE with debootstrap (minbase bookworm from $MIRROR; about a minute)"
debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
# as in the public slim image: no manuals, docs or translations from later installs
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
  "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" -c . | "$ENGINE" import --change 'CMD ["bash"]' - "$IMAGE" >/dev/null
echo "made $IMAGE"
