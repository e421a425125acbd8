#!/usr/bin/env bash
# The container image, built from the Dockerfile and smoke-tested (`make image-smoke`; `.ci/run`
# runs it after `make test`). Exit 0 when every step passed; 1 naming the step that failed, with
# its output and the container's log; 2 when it cannot run here at all.
#
# There is no Docker engine on the CI machines, so it builds and runs with rootful podman from
# the Debian packages (installed when missing), on a STAND-IN base: a debootstrapped Debian
# bookworm (python3 3.11) imported as a local image and passed as the Dockerfile's PYTHON_IMAGE.
# The published image keeps the official python:3.11-slim base; the stand-in only lets CI build
# and run everything above the FROM lines (README.md, "The container image").
#
# Steps, each with its own time bound:
#   tools         podman buildah debootstrap runc fuse-overlayfs uidmap slirp4netns (apt-get)
#   config        containers.conf and storage.conf of the script's own (CONTAINERS_CONF,
#                 CONTAINERS_STORAGE_CONF; nothing in /etc changes): runc (crun fails on
#                 hybrid cgroups), cgroupfs, file events, ulimits that need no raising; images
#                 in a storage of their own under the cache directory
#   base          the stand-in base, built once and cached (by its recipe and the host's CAs)
#   build         `podman build --format docker` (the default OCI format drops HEALTHCHECK)
#   image-config  the built image's config against the Dockerfile and the Kubernetes example
#                 (tests/deploy/test_image_contract.py with SD_IMAGE_INSPECT)
#   plain run     the default command, ports published on loopback, as the Kubernetes example
#                 runs it (read-only root, a /tmp tmpfs, no capabilities, no privilege gain):
#                 gRPC health from outside, `podman healthcheck run`, uid 10001, a Decide,
#                 a Dispatch delivered to a webhook sink on the host's loopback, SIGTERM drain
#   TLS run       SD_TLS_CERT/SD_TLS_KEY (a throwaway certificate): health and a Decide over
#                 TLS, plaintext refused on the API port, the plaintext health port, the
#                 image's HEALTHCHECK, SIGTERM drain
#   size          the image's size (on the stand-in base)
# Containers and the image it built are removed at exit; the cached base stays.
#
# Networking: containers run with slirp4netns and allow_host_loopback, the usual `-p` publishing
# on 127.0.0.1 with ports podman picks (nothing fixed can collide), the image's default command
# unchanged; the container reaches the host's loopback as 10.0.2.2, where the webhook sink
# listens on 127.0.0.1 only. Host networking would need the command changed (port 50051 may be
# taken on the host) and would bind 0.0.0.0 on the host. The build uses the host's network: its
# RUN steps only need to reach the package indexes as the host does.
#
# Environment: SD_SMOKE_CACHE (the cache: base image and storage; default
# ~/.cache/smart-dispatch/image-smoke), SD_SMOKE_MIRROR (Debian mirror for debootstrap),
# PY (the venv's python, default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SELF=$ROOT/scripts/image_smoke.sh
PY=${PY:-$ROOT/.venv/bin/python}
CLIENT=$ROOT/scripts/image_smoke_client.py
CACHE=${SD_SMOKE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/smart-dispatch/image-smoke}
RUNROOT=/run/smart-dispatch-image-smoke
MIRROR=${SD_SMOKE_MIRROR:-http://deb.debian.org/debian}
PACKAGES="podman buildah debootstrap runc fuse-overlayfs uidmap slirp4netns"
# The stand-in base: bump BASE_RECIPE when build_base changes what it makes.
BASE_RECIPE=1
BASE_SUITE=bookworm
BASE_INCLUDE=python3,python3-pip,python3-dev,ca-certificates
BASE_REPO=localhost/smart-dispatch-smoke-base
LOCAL_CAS=/usr/local/share/ca-certificates
# The image's ports (EXPOSE; tests/deploy/test_image_contract.py pins them to its CMD and ENV),
# its user, and how long a drain may take (SD_SHUTDOWN_GRACE_S is 10 s by default).
API_PORT=50051
HEALTH_PORT=50052
IMAGE_UID=10001
DRAIN_BOUND_S=15
SINK_HOST=10.0.2.2 # the host's loopback, seen from a slirp4netns container

export CONTAINERS_CONF=$CACHE/containers.conf
export CONTAINERS_STORAGE_CONF=$CACHE/storage.conf

base_image() {
  # The cached base's name: its recipe, the mirror and the host's extra CA certificates.
  local digest
  digest=$({
    echo "$BASE_RECIPE $BASE_SUITE $BASE_INCLUDE $MIRROR"
    if [ -d "$LOCAL_CAS" ]; then
      find "$LOCAL_CAS" -type f -name '*.crt' -print0 | sort -z | xargs -0 -r cat
    fi
  } | sha256sum | cut -c1-12)
  echo "$BASE_REPO:$BASE_SUITE-$digest"
}
BASE=$(base_image)

# ----------------------------------------------------------------------------------------------
# Steps. Each runs as `image_smoke.sh --step NAME ARGS` under `timeout`, its output in a log file;
# what a later step needs goes through files in $SMOKE_WORK.

step_tools() {
  local missing=() package
  for package in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
      || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  echo "${missing[*]:+installed }$PACKAGES${missing[*]:+ (were missing: ${missing[*]})}"
}

step_config() {
  mkdir -p "$CACHE/storage" "$RUNROOT"
  cat >"$CONTAINERS_CONF" <<EOF
# Written by scripts/image_smoke.sh (CONTAINERS_CONF); not /etc/containers.
[containers]
# Raising rlimits is not permitted on the CI machines: start containers within the limits.
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
# crun fails on the CI machines' hybrid cgroups; there is no systemd.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$RUNROOT/libpod"
EOF
  # Overlay on an overlay file system (a containerised CI runner) needs fuse-overlayfs.
  local mount_program=""
  if [ "$(stat -f -c %T "$CACHE/storage")" = overlayfs ]; then
    mount_program='mount_program = "/usr/bin/fuse-overlayfs"'
  fi
  cat >"$CONTAINERS_STORAGE_CONF" <<EOF
# Written by scripts/image_smoke.sh (CONTAINERS_STORAGE_CONF): a storage of its own, so that
# cleaning up can never touch anybody else's images and containers.
[storage]
driver = "overlay"
graphroot = "$CACHE/storage"
runroot = "$RUNROOT/storage"
[storage.options.overlay]
$mount_program
EOF
  echo "$(podman --version), $(runc --version | head -n 1), $CONTAINERS_CONF"
}

release_rootfs() {
  # Unmount what an interrupted debootstrap left mounted inside, then remove it, never
  # crossing into another file system.
  local rootfs=$1
  [ -e "$rootfs" ] || return 0
  findmnt -rn -o TARGET | { grep -F "$rootfs/" || true; } | sort -r | while read -r target; do
    umount -l "$target"
  done
  rm -rf --one-file-system "$rootfs"
}

step_base() {
  if podman image exists "$BASE"; then
    echo "$BASE: cached"
    return
  fi
  local rootfs=$CACHE/rootfs.partial
  release_rootfs "$rootfs"
  debootstrap --variant=minbase --include="$BASE_INCLUDE" "$BASE_SUITE" "$rootfs" "$MIRROR"
  chroot "$rootfs" python3 -c \
    'import sys; assert sys.version_info[:2] == (3, 11), sys.version; print("python", sys.version)'
  # The host's extra CA certificates, so that pip in the build reaches the package index the
  # way the host does (e.g. through a TLS-inspecting egress proxy).
  if [ -d "$LOCAL_CAS" ]; then
    cp -R "$LOCAL_CAS/." "$rootfs$LOCAL_CAS/"
  fi
  chroot "$rootfs" update-ca-certificates
  # The official image's pip installs system-wide and `python`/`pip` are on PATH; Debian's
  # python3 refuses system-wide installs (PEP 668) and names them python3/pip3.
  rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
  ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/pip"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner -C "$rootfs" -cf - . | podman import \
    --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV=LANG=C.UTF-8' --change 'CMD=["python3"]' \
    --message "smart-dispatch image smoke test: stand-in base (recipe $BASE_RECIPE)" - "$BASE"
  release_rootfs "$rootfs"
  # Older stand-ins (another recipe, other CAs) are not needed any more.
  podman images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$BASE_REPO" \
    | { grep -vxF "$BASE" || true; } | xargs -r podman rmi
  echo "$BASE: built"
}

step_build() {
  # RUN steps get a runc state directory of their own (so a build cut short can be found and
  # ended) and their bundles go to the work directory.
  local image=$1
  mkdir -p "$SMOKE_WORK/tmp"
  TMPDIR=$SMOKE_WORK/tmp podman build --format docker --pull=never --network host --layers=false \
    --runtime-flag "root=$RUNROOT/runc" \
    --build-arg "PYTHON_IMAGE=$BASE" --tag "$image" --file Dockerfile "$ROOT"
  echo "$image: built from Dockerfile on $BASE"
}

step_image_config() {
  local image=$1 inspect=$SMOKE_WORK/image.json
  podman image inspect "$image" >"$inspect"
  SD_IMAGE_INSPECT=$inspect "$PY" -m pytest -q -p no:cacheprovider -k built \
    tests/deploy/test_image_contract.py
  echo "the built image's ENTRYPOINT, CMD, EXPOSE, USER, ENV, HEALTHCHECK: the Dockerfile's, deploy/'s"
}

step_start() {
  # step_start NAME [podman run options...]: run the image's default command detached; the
  # published ports go to $SMOKE_WORK/NAME.api and NAME.health.
  local name=$1
  shift
  podman run --detach --name "$name" \
    --network slirp4netns:allow_host_loopback=true \
    --publish "127.0.0.1::$API_PORT" --publish "127.0.0.1::$HEALTH_PORT" \
    --read-only --read-only-tmpfs=false --tmpfs /tmp \
    --cap-drop ALL --security-opt no-new-privileges \
    --health-interval=disable \
    "$@" "$SMOKE_IMAGE"
  # podman 4.3 ignores --health-interval for an image's HEALTHCHECK and logs that it cannot
  # reach systemd to set up the timer (podman issue 20212); `podman healthcheck run` works.
  podman port "$name" "$API_PORT/tcp" | head -n 1 >"$SMOKE_WORK/$name.api"
  podman port "$name" "$HEALTH_PORT/tcp" | head -n 1 >"$SMOKE_WORK/$name.health"
  echo "$name: API on $(cat "$SMOKE_WORK/$name.api"), health on $(cat "$SMOKE_WORK/$name.health")"
}

step_healthcheck() {
  local name=$1 status
  podman healthcheck run "$name"
  status=$(podman inspect --format '{{.State.Health.Status}}' "$name")
  [ "$status" = healthy ] || { echo "health status: $status"; return 1; }
  echo "podman healthcheck run: $status ($(podman inspect \
    --format '{{range .State.Health.Log}}{{.Output}}{{end}}' "$name" | tail -n 1))"
}

step_user() {
  local name=$1 pid1 exec_uid
  pid1=$(podman top "$name" pid huser user | awk '$1 == 1 {print $2 " (" $3 ")"}')
  exec_uid=$(podman exec "$name" id -u)
  echo "PID 1 runs as $pid1, exec as uid $exec_uid"
  [ "${pid1%% *}" = "$IMAGE_UID" ] && [ "$exec_uid" = "$IMAGE_UID" ]
}

step_drain() {
  local name=$1 started took code
  started=$(date +%s%N)
  podman kill --signal TERM "$name" >/dev/null
  code=$(podman wait "$name")
  took=$((($(date +%s%N) - started) / 1000000))
  podman logs "$name" 2>&1 | tail -n 5
  [ "$code" = 0 ] || { echo "exit code $code after SIGTERM (expected 0)"; return 1; }
  [ "$took" -le $((DRAIN_BOUND_S * 1000)) ] \
    || { echo "took ${took} ms (bound ${DRAIN_BOUND_S} s)"; return 1; }
  podman logs "$name" 2>&1 | grep -q 'signal received: draining' \
    || { echo "no drain in the log"; return 1; }
  echo "SIGTERM: drained and exited 0 in ${took} ms"
}

step_size() {
  local image=$1 size base_size
  size=$(podman image inspect --format '{{.Size}}' "$image")
  base_size=$(podman image inspect --format '{{.Size}}' "$BASE")
  echo "image size: $((size / 1000000)) MB ($size bytes) on the stand-in base of $((base_size / 1000000)) MB"
}

step_client() {
  # The host side: scripts/image_smoke_client.py with the venv's python.
  "$PY" "$CLIENT" "$@"
}

if [ "${1:-}" = --step ]; then
  shift
  fn=$1
  shift
  "step_${fn//-/_}" "$@"
  exit
fi

# ----------------------------------------------------------------------------------------------
# The run.

if [ "$(id -u)" != 0 ]; then
  echo "image smoke: needs root (rootful podman, apt-get, debootstrap); CI runs as root" >&2
  exit 2
fi
for tool in apt-get dpkg-query timeout flock; do
  command -v "$tool" >/dev/null || { echo "image smoke: needs $tool (a Debian machine)" >&2; exit 2; }
done
[ -x "$PY" ] || { echo "image smoke: no $PY: run 'make setup' first (make image-smoke does)" >&2; exit 2; }

export SMOKE_WORK SMOKE_IMAGE WEBHOOK_SECRET
SMOKE_WORK=$(mktemp -d "${TMPDIR:-/tmp}/sd-image-smoke.XXXXXX")
SMOKE_IMAGE=localhost/smart-dispatch-smoke:run-$$
WEBHOOK_SECRET=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
PLAIN=sd-smoke-plain-$$
TLS=sd-smoke-tls-$$
started_at=$SECONDS
container=""   # the container whose log a failure shows
built=false
locked=false   # the cache's storage is ours to clean only while we hold its lock

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$locked" = true ] && command -v podman >/dev/null 2>&1 && [ -f "$CONTAINERS_CONF" ]; then
    timeout 60 podman rm --force --time 0 "$PLAIN" "$TLS" >/dev/null 2>&1 || true
    timeout 60 podman rmi --force "$SMOKE_IMAGE" >/dev/null 2>&1 || true
    if [ "$built" != true ]; then  # a build cut short leaves a RUN step and its containers
      runc --root "$RUNROOT/runc" list -q 2>/dev/null \
        | xargs -r -n 1 timeout 30 runc --root "$RUNROOT/runc" delete --force || true
      timeout 60 buildah rm --all >/dev/null 2>&1 || true
    fi
    timeout 60 podman image prune --force >/dev/null 2>&1 || true
  fi
  rm -rf --one-file-system "$SMOKE_WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() {
  # step NAME TIMEOUT_S ARGS...: `--step NAME ARGS` within TIMEOUT_S; the last line of its
  # output on success; on failure its output and the container's log, then exit 1.
  local name=$1 limit=$2 t0=$SECONDS rc=0 log=$SMOKE_WORK/$1.log
  shift 2
  # 9>&-: nothing a step starts (conmon, slirp4netns) may keep the cache's lock.
  timeout --kill-after=10 "$limit" "$SELF" --step "$@" >"$log" 2>&1 9>&- || rc=$?
  if [ "$rc" -ne 0 ]; then
    local why="exit $rc"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then why="timed out after ${limit} s"; fi
    printf '%-20s FAILED (%s)\n' "$name" "$why"
    echo "----- output of step '$name' (last 60 lines)"
    tail -n 60 "$log"
    if [ -n "$container" ]; then
      echo "----- log of container $container (last 100 lines)"
      timeout 30 podman logs --tail 100 "$container" 2>&1 || true
    fi
    echo "image smoke: FAILED at step '$name' ($why) after $((SECONDS - started_at)) s" >&2
    exit 1
  fi
  printf '%-20s ok %4d s  %s\n' "$name" $((SECONDS - t0)) "$(tail -n 1 "$log")"
}

client() {
  # client NAME TIMEOUT_S COMMAND ARGS...: a step run by the venv's python (the host side).
  local name=$1 limit=$2
  shift 2
  step "$name" "$limit" client "$@"
}

echo "image smoke: cache $CACHE, work $SMOKE_WORK"
# One run at a time per cache: cleaning up removes every leftover of the cache's storage.
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -w 900 9 || { echo "image smoke: another run held $CACHE/lock for 15 minutes" >&2; exit 1; }
locked=true
step tools 600 tools
step config 10 config
step base 1200 base
step build 900 build "$SMOKE_IMAGE"
built=true
step image-config 120 image-config "$SMOKE_IMAGE"

# -- the default command, as the Kubernetes example runs it ------------------------------------
mkdir -m 755 "$SMOKE_WORK/smoke"
printf 'webhook: {type: webhook, secret_env: WEBHOOK_SECRET, timeout_s: 5}\n' \
  >"$SMOKE_WORK/smoke/providers.yaml"
chmod 644 "$SMOKE_WORK/smoke/providers.yaml"
container=$PLAIN
step start 60 start "$PLAIN" --volume "$SMOKE_WORK/smoke:/etc/smart-dispatch/smoke:ro" \
  --env SD_PROVIDERS=/etc/smart-dispatch/smoke/providers.yaml --env WEBHOOK_SECRET
api=$(cat "$SMOKE_WORK/$PLAIN.api")
client health 45 wait-serving --target "$api" --timeout 30
client health-port 20 wait-serving --target "$(cat "$SMOKE_WORK/$PLAIN.health")" --timeout 10
step healthcheck 30 healthcheck "$PLAIN"
step user 30 user "$PLAIN"
client decide 30 decide --target "$api"
client dispatch 60 dispatch --target "$api" --sink-host "$SINK_HOST" --secret-env WEBHOOK_SECRET \
  --timeout 30
step drain 30 drain "$PLAIN"

# -- TLS on the API port: health through the plaintext health port -----------------------------
container=""
client tls-cert 30 cert --out "$SMOKE_WORK/tls"
container=$TLS
step tls-start 60 start "$TLS" --volume "$SMOKE_WORK/tls:/etc/smart-dispatch/tls:ro" \
  --env SD_TLS_CERT=/etc/smart-dispatch/tls/cert.pem --env SD_TLS_KEY=/etc/smart-dispatch/tls/key.pem
api=$(cat "$SMOKE_WORK/$TLS.api")
client tls-health 45 wait-serving --target "$api" --tls-ca "$SMOKE_WORK/tls/cert.pem" --timeout 30
client tls-only 20 refuses-plaintext --target "$api"
client tls-health-port 20 wait-serving --target "$(cat "$SMOKE_WORK/$TLS.health")" --timeout 10
step tls-healthcheck 30 healthcheck "$TLS"
client tls-decide 30 decide --target "$api" --tls-ca "$SMOKE_WORK/tls/cert.pem"
step tls-drain 30 drain "$TLS"
container=""

step size 30 size "$SMOKE_IMAGE"
echo "image smoke: passed in $((SECONDS - started_at)) s"
