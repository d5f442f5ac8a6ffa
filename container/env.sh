# Sourced by the container scripts: a private podman configuration under var/containers/,
# so nothing in /etc/containers (or ~/.config/containers) is read or changed.
#   . container/env.sh && podman images
# shellcheck shell=bash
BOOKCHAT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CT_DIR="$BOOKCHAT_ROOT/var/containers"
mkdir -p "$CT_DIR/storage" "$CT_DIR/run" "$CT_DIR/tmp"

# runc + cgroupfs: this host's cgroups are hybrid (v1 controllers), which crun refuses and
# systemd cannot manage from inside the sandbox; events go to a file for the same reason.
# The sandbox lacks CAP_SYS_RESOURCE, so podman's default ulimits (1048576) cannot be set.
cat >"$CT_DIR/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$CT_DIR/events.log"
tmp_dir = "$CT_DIR/tmp"
CONF

cat >"$CT_DIR/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$CT_DIR/storage"
runroot = "$CT_DIR/run"
CONF

# No registry is reachable: every image is local, and short names never ask a question.
cat >"$CT_DIR/registries.conf" <<CONF
unqualified-search-registries = []
short-name-mode = "disabled"
CONF

export CONTAINERS_CONF="$CT_DIR/containers.conf"
export CONTAINERS_STORAGE_CONF="$CT_DIR/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$CT_DIR/registries.conf"
export TMPDIR="$CT_DIR/tmp"
