#!/usr/bin/env bash
# The steps of ci/github-workflow.yml on this project's own manifests (the 2015 article's nginx
# RC and services), in each proxy mode: start a lab, apply, wait, check the reachability matrix
# against tests/fixtures/reach/seed.expect, keep the evidence when it differs, tear down.
#
#   sudo ./ci/e2e.sh [MODE...]     # default: userspace iptables nftables
set -euo pipefail
cd "$(dirname "$0")/.."
kemu=${KEMU:-./kemu}        # linked by ci/bootstrap.sh
expect=tests/fixtures/reach/seed.expect
evidence=${EVIDENCE:-target/kemu-evidence}
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(userspace iptables nftables)

for mode in "${modes[@]}"; do
  lab="e2e-$mode"
  echo "=== $lab"
  $kemu up topologies/seed.yaml --name "$lab" --proxy-mode "$mode" --no-kubeconfig >/dev/null
  trap '$kemu down "$lab" >/dev/null' EXIT
  kubectl=(kubectl --kubeconfig "/run/kemu/$lab/kubeconfig")
  "${kubectl[@]}" apply -f examples/seed/
  # `kubectl wait` fails at once while the controller has not created the pods yet.
  for _ in $(seq 100); do
    [ "$("${kubectl[@]}" get pods -l name=nginx -o name | wc -l)" -ge 2 ] && break
    sleep 0.1
  done
  "${kubectl[@]}" wait --for=condition=Ready pods -l name=nginx --timeout=120s
  # The proxies sync within a fraction of a second; give the matrix a few tries.
  ok=
  for _ in 1 2 3 4 5; do
    if $kemu reach "$lab" --expect "$expect" >/dev/null 2>&1; then ok=1; break; fi
    sleep 1
  done
  if [ -z "$ok" ]; then
    mkdir -p "$evidence/$lab"
    $kemu reach "$lab" --expect "$expect" > "$evidence/$lab/reach.txt" 2>&1 || true
    $kemu snapshot "$lab" > "$evidence/$lab/rules.txt" 2>&1 || true
    $kemu status "$lab" > "$evidence/$lab/status.txt" 2>&1 || true
    cp -r "/run/kemu/$lab/logs" "$evidence/$lab/" 2>/dev/null || true
    cat "$evidence/$lab/reach.txt"
    echo "$lab: the reachability matrix differs; evidence in $evidence/$lab" >&2
    exit 1
  fi
  $kemu reach "$lab" --expect "$expect" | tail -1
  $kemu down "$lab" >/dev/null
  trap - EXIT
done
