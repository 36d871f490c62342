#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for kemu and run it.
#
#   sudo ./ci/bootstrap.sh up      # install, build, start the seed lab (topologies/seed.yaml)
#   sudo ./ci/bootstrap.sh test    # install, build, run every test (they need root)
#   sudo ./ci/bootstrap.sh deps    # install the Debian packages only
#
# Idempotent: packages already installed and an up-to-date build are reused.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(iproute2 iptables nftables conntrack curl iputils-ping netcat-openbsd iperf3 tcpdump procps util-linux ca-certificates)

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "kemu creates network namespaces and needs root: run 'sudo $0 $*'" >&2
    exit 1
  fi
}

deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null; then
    echo "cargo is missing: install Rust (https://rustup.rs) and run this again" >&2
    exit 1
  fi
}

case "${1:-up}" in
  deps)
    need_root "$@"; deps ;;
  up)
    need_root "$@"; deps
    cargo build --release --locked
    ./target/release/kemu up topologies/seed.yaml ;;
  test)
    need_root "$@"; deps
    cargo test --locked --no-fail-fast ;;
  *)
    echo "usage: $0 up|test|deps" >&2; exit 2 ;;
esac
