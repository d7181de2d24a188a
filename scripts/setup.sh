#!/usr/bin/env bash
# Idempotent developer/CI setup for berth on a fresh Debian/Ubuntu machine.
#
#   bash scripts/setup.sh        (as root, or as a user with sudo)
#
# 1. installs the system packages in APT_PACKAGES (apt-get update only when
#    something is missing),
# 2. makes /run/sshd,
# 3. builds .venv with /usr/bin/python3 and installs the project (-e '.[test]'),
#    skipped when .venv/.berth-setup-hash says it is current,
# 4. runs npm ci / npm install when a package.json exists, skipped when
#    node_modules/.berth-setup-hash says it is current.
#
# Prints nothing when there is nothing to do; one line per step it performs.
set -euo pipefail

# System packages the project needs. Add to this list; keep it the only one.
APT_PACKAGES=(
  python3 python3-venv python3-dev
  git
  openssh-server openssh-client dropbear-bin sshpass
  rsync           # users copy files into sessions over SSH (scp and sftp come with openssh)
  postgresql
  procps iproute2
  curl ca-certificates
  passwd          # useradd / userdel
  zstd
  restic
  chromium        # the browser tests (tests/browser) drive it through Playwright, which cannot download one here
  # the Remote Desktop app's stack on workers: Xvnc (X and VNC server in one, resizes with the viewer),
  # a light window manager, a terminal; vncconfig and xset for users and tests
  tigervnc-standalone-server tigervnc-tools openbox xterm x11-xserver-utils
  python3-tk      # bench/gateway.py's desktop section: the moving windows it measures are Tk programs
  # the container backend (BERTH_AGENT_BACKEND=container): Podman with runc (crun fails on cgroup v1 hosts),
  # user namespaces (newuidmap), rootless-capable networking and overlays; debootstrap builds the test image
  podman runc uidmap slirp4netns fuse-overlayfs debootstrap
)

# Bump to force a reinstall of the venv / node_modules on every machine.
SETUP_VERSION=1
SYSTEM_PYTHON=/usr/bin/python3

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd -P)

log() { printf 'setup.sh: %s\n' "$*" >&2; }
die() { printf 'setup.sh: ERROR: %s\n' "$*" >&2; exit 1; }

LOG_FILE=$(mktemp "${TMPDIR:-/tmp}/berth-setup.XXXXXX.log")
trap 'rm -f "$LOG_FILE"' EXIT

# run_quiet DESCRIPTION CMD...: run CMD with output captured; show it on failure.
run_quiet() {
  local what=$1; shift
  if ! "$@" >"$LOG_FILE" 2>&1; then
    printf 'setup.sh: ERROR: %s failed: %s\n' "$what" "$*" >&2
    printf '%s\n' '----- output (last 60 lines) -----' >&2
    tail -n 60 "$LOG_FILE" >&2
    printf '%s\n' '----------------------------------' >&2
    exit 1
  fi
}

SUDO=()
if [[ $EUID -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    if [[ -t 0 ]]; then SUDO=(sudo); else SUDO=(sudo -n); fi
  else
    SUDO=(__no_sudo__)
  fi
fi
as_root() {
  if [[ ${SUDO[0]:-} == __no_sudo__ ]]; then
    die "need root for: $* (run as root or install sudo)"
  fi
  "${SUDO[@]}" "$@"
}

# ---------------------------------------------------------------- packages
wanted=("${APT_PACKAGES[@]}")
if [[ -f package.json ]] && ! command -v npm >/dev/null 2>&1; then
  wanted+=(nodejs npm)
fi

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script supports Debian/Ubuntu only"
declare -A installed=()
while read -r pkg status; do
  [[ $status == ii* ]] && installed[$pkg]=1
done < <(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${wanted[@]}" 2>/dev/null || true)

missing=()
for pkg in "${wanted[@]}"; do
  [[ -n ${installed[$pkg]:-} ]] || missing+=("$pkg")
done

if ((${#missing[@]})); then
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; missing packages: ${missing[*]}"
  log "installing system packages: ${missing[*]}"
  APT_OPTS=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
  run_quiet "apt-get update" as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get "${APT_OPTS[@]}" update -q
  run_quiet "apt-get install" as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get "${APT_OPTS[@]}" install -y -q --no-install-recommends "${missing[@]}"
fi

# ---------------------------------------------------------------- sshd
if [[ ! -d /run/sshd ]]; then
  as_root mkdir -p /run/sshd
  as_root chmod 0755 /run/sshd
fi

# ---------------------------------------------------------------- venv
[[ -x $SYSTEM_PYTHON ]] || die "$SYSTEM_PYTHON not found (package python3)"

venv_ok() {
  [[ -x .venv/bin/python && -f .venv/pyvenv.cfg ]] || return 1
  # Must be built from the system interpreter: a pyenv one under /root is not
  # usable by the other users the tests run processes as.
  grep -Eq '^home *= */usr/bin$' .venv/pyvenv.cfg || return 1
  .venv/bin/python -c '' >/dev/null 2>&1
}

if ! venv_ok; then
  if [[ -e .venv ]]; then
    log "recreating .venv (missing, broken or not built from $SYSTEM_PYTHON)"
    rm -rf .venv
  else
    log "creating .venv"
  fi
  run_quiet "venv creation" "$SYSTEM_PYTHON" -m venv .venv
fi

want_hash=$( { echo "v$SETUP_VERSION $REPO_ROOT"; .venv/bin/python -V 2>&1; cat pyproject.toml; } | sha256sum | cut -d' ' -f1)
have_hash=$(cat .venv/.berth-setup-hash 2>/dev/null || true)
if [[ $want_hash != "$have_hash" ]] || ! compgen -G '.venv/lib/python3*/site-packages/berth-*.dist-info' >/dev/null; then
  log "installing Python dependencies into .venv"
  rm -f .venv/.berth-setup-hash
  run_quiet "pip upgrade" .venv/bin/python -m pip install -q --upgrade pip
  run_quiet "pip install" .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want_hash" > .venv/.berth-setup-hash
fi

# ---------------------------------------------------------------- node
if [[ -f package.json ]]; then
  command -v npm >/dev/null 2>&1 || die "npm not found although package.json exists"
  # Computed from whatever lock files exist now (npm install may create one).
  node_hash() {
    { echo "v$SETUP_VERSION"; node --version 2>&1 || true
      cat package.json; cat package-lock.json 2>/dev/null || true; } | sha256sum | cut -d' ' -f1
  }
  if [[ -f package-lock.json ]]; then npm_cmd=(npm ci); else npm_cmd=(npm install); fi
  have_hash=$(cat node_modules/.berth-setup-hash 2>/dev/null || true)
  if [[ $(node_hash) != "$have_hash" ]]; then
    log "installing node packages (${npm_cmd[*]})"
    run_quiet "${npm_cmd[*]}" "${npm_cmd[@]}" --no-audit --no-fund --loglevel=error
    mkdir -p node_modules
    node_hash > node_modules/.berth-setup-hash
  fi
fi
