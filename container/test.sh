#!/usr/bin/env bash
# `just container-test`: build the image from the Containerfile with podman and check what a
# deployment relies on, then remove everything this run made (the cached base image stays).
#   migrations as a one-shot container; the server on a non-default PORT; /healthz;
#   the image's HEALTHCHECK via `podman healthcheck run`; a non-root process;
#   SIGTERM (podman stop) ends it cleanly in under 10 s.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/env.sh"
cd "$BOOKCHAT_ROOT"

for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null || { echo "FATAL: $tool is not installed (apt-get install podman runc debootstrap)" >&2; exit 1; }
done

TAG="bookchat-ct-$$"
IMAGE="localhost/bookchat:$TAG"
VOLUME="$TAG-var"
SERVER="$TAG-server"
CT_PORT=8123                      # not the image's default 8000: PORT must be honoured
HOST_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
start_all=$SECONDS

# Podman arms a systemd timer for the HEALTHCHECK interval; this sandbox has no systemd, so it
# logs "unable to get systemd connection" on each run. The check itself is run on demand by
# `podman healthcheck run` below; only that one known line is dropped from stderr.
quiet_timer() { "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }

step() { printf '\n-- %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; podman logs "$SERVER" 2>&1 | tail -30 >&2 || true; exit 1; }
cleanup() {
  podman rm -f -t 0 "$SERVER" >/dev/null 2>&1 || true
  podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
  podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
  podman image prune -f >/dev/null 2>&1 || true   # this build's dangling stage images
  left="$(podman ps -a --format '{{.Names}}' | grep -c "^$TAG" || true)"
  echo "cleanup: removed container, volume and image $TAG (${left} containers left)"
}
trap cleanup EXIT

step "base image"
bash "$HERE/base-image.sh"

step "build (podman build --format docker: OCI images drop HEALTHCHECK)"
t=$SECONDS
podman build --quiet --format docker -t "$IMAGE" -f Containerfile . >/dev/null
echo "built $IMAGE in $((SECONDS - t)) s"
hc="$(podman image inspect "$IMAGE" --format '{{json .Config.Healthcheck}}')"
[[ "$hc" == *healthz* ]] || fail "the image has no HEALTHCHECK (got: $hc)"
echo "image HEALTHCHECK: $hc"
[[ "$(podman image inspect "$IMAGE" --format '{{.Config.StopSignal}}')" == "SIGTERM" ]] || fail "STOPSIGNAL is not SIGTERM"

podman volume create "$VOLUME" >/dev/null

step "migrations as a one-shot container"
podman run --rm --no-healthcheck -v "$VOLUME:/app/var" "$IMAGE" bookchat migrate
rev="$(podman run --rm --no-healthcheck -v "$VOLUME:/app/var" "$IMAGE" python -c \
  "import sqlite3; print(sqlite3.connect('/app/var/bookchat.db').execute('select version_num from alembic_version').fetchone()[0])")"
[[ -n "$rev" ]] || fail "no alembic revision recorded after bookchat migrate"
echo "alembic_version: $rev"

# Whether the server's log shows PATTERN (case-insensitive) within 5 s. conmon writes the
# log file asynchronously, so a line may land after /healthz answers; and the log is read
# whole first, since `podman logs | grep -q` fails under pipefail when grep stops at its
# match while podman still writes (SIGPIPE). One of the two failed a CI run here.
log_shows() {
  local server_log
  for _ in $(seq 1 20); do
    server_log="$(podman logs "$SERVER" 2>&1)"
    grep -qi -- "$1" <<<"$server_log" && return 0
    sleep 0.25   # polling a log file another process writes, not synchronising a test
  done
  return 1
}

step "server with PORT=$CT_PORT (published on 127.0.0.1:$HOST_PORT)"
quiet_timer podman run -d --name "$SERVER" -v "$VOLUME:/app/var" -e PORT="$CT_PORT" \
  -p "127.0.0.1:$HOST_PORT:$CT_PORT" "$IMAGE" >/dev/null
ok=""
for _ in $(seq 1 60); do
  if body="$(curl -sf --max-time 2 "http://127.0.0.1:$HOST_PORT/healthz")"; then ok=1; break; fi
  [[ "$(podman inspect "$SERVER" --format '{{.State.Running}}')" == "true" ]] || fail "the server exited"
  sleep 0.5   # polling a starting process, not synchronising a test
done
[[ -n "$ok" ]] || fail "/healthz did not answer within 30 s on PORT=$CT_PORT"
echo "/healthz: $body"
log_shows ":$CT_PORT" || fail "the server log does not show port $CT_PORT"
echo "PORT honoured: listening on $CT_PORT"

step "podman healthcheck run"
podman healthcheck run "$SERVER" || fail "podman healthcheck run reported unhealthy"
echo "healthcheck: healthy"

step "non-root"
uid="$(podman exec "$SERVER" id -u)"
# The server's process as the host sees it (rootful podman, no user namespace: real uids).
pid="$(podman inspect "$SERVER" --format '{{.State.Pid}}')"
puid="$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")"
[[ "$uid" != "0" && "$puid" != "0" ]] || fail "the server runs as root (exec uid $uid, process uid $puid)"
echo "uid: $uid (server process uid $puid, user $(podman exec "$SERVER" id -un))"

step "SIGTERM (podman stop) stops it cleanly"
t0="$(date +%s%N)"
quiet_timer podman stop -t 10 "$SERVER" >/dev/null
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
code="$(podman inspect "$SERVER" --format '{{.State.ExitCode}}')"
[[ "$code" == "0" ]] || fail "exit code $code after SIGTERM (137 would mean it was killed)"
(( ms < 10000 )) || fail "stop took ${ms} ms (limit 10 s)"
log_shows "shutdown completed" || fail "no clean shutdown line in the log"
echo "clean stop: exit code $code in ${ms} ms"

printf '\ncontainer-test: OK in %s s\n' "$((SECONDS - start_all))"
