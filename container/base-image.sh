#!/usr/bin/env bash
# Builds `localhost/python:3.11-slim`, a stand-in for the official image (no image registry
# is reachable from here): Debian bookworm minbase from the Debian mirror apt already uses,
# its python3 (3.11) with venv and pip, the host's CA certificates, and no
# EXTERNALLY-MANAGED marker (the real image has none, and the Containerfile pip-installs).
# Cached in podman's storage under var/containers/: a second run does nothing.
set -euo pipefail
. "$(dirname "$0")/env.sh"
IMAGE="localhost/python:3.11-slim"

if podman image exists "$IMAGE"; then
  echo "base image $IMAGE: cached"
  exit 0
fi
for tool in debootstrap podman runc; do
  command -v "$tool" >/dev/null || { echo "FATAL: $tool is not installed (apt-get install podman runc debootstrap)" >&2; exit 1; }
done

# The mirror apt uses on this machine (deb822 or one-line sources).
MIRROR="$(grep -hoE 'https?://[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -1 || true)"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
ROOTFS="$CT_DIR/base-rootfs"
rm -rf "$ROOTFS"
start=$SECONDS
echo "base image $IMAGE: debootstrap bookworm from $MIRROR (a few minutes, once)"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
  bookworm "$ROOTFS" "$MIRROR" >"$CT_DIR/debootstrap.log" 2>&1 \
  || { tail -20 "$CT_DIR/debootstrap.log" >&2; echo "FATAL: debootstrap failed (log: $CT_DIR/debootstrap.log)" >&2; exit 1; }

# The sandbox's outbound proxy re-signs TLS: pip inside the build trusts what the host trusts.
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
# Slim: no apt lists, caches, docs or man pages in the image.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*

tar -C "$ROOTFS" -c . | podman import \
  --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --quiet - "$IMAGE" >/dev/null
rm -rf "$ROOTFS"
echo "base image $IMAGE: built in $((SECONDS - start)) s"
