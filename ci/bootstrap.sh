#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for kemu and run it.
#
#   sudo ./ci/bootstrap.sh up      # install, build, start the seed lab and the article's nginx
#   sudo ./ci/bootstrap.sh test    # install, build, run every test (they need root)
#   sudo ./ci/bootstrap.sh build   # install, build bin/ and ./kemu only
#   sudo ./ci/bootstrap.sh deps    # install the Debian packages only
#
# Idempotent: packages already installed and an up-to-date build are reused.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(iproute2 iptables nftables ethtool conntrack curl iputils-ping netcat-openbsd iperf3 tcpdump procps util-linux ca-certificates
          docker-registry apache2-utils  # these two: tests/images_registry.rs
          bind9-dnsutils                 # dig and nslookup: tests/dns.rs
          docker.io busybox-static       # the Docker runtime and its test image (tests/runtime_docker.rs)
          python3 python3-venv)          # the Python client in a pod (tests/incluster.rs)

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
  python_client
  start_dockerd
}

# The official Python client (`kubernetes` on PyPI) in a virtual environment of the system
# Python, where pods (which see the host's files) can run it: tests/incluster.rs uses its
# in-cluster configuration from inside a pod.
PYTHON_CLIENT=/var/lib/kemu-ci/python
python_client() {
  if [ -x "$PYTHON_CLIENT/bin/python" ] && "$PYTHON_CLIENT/bin/python" -c "import kubernetes" 2>/dev/null; then
    return 0
  fi
  echo "installing the Python client into $PYTHON_CLIENT"
  mkdir -p "$(dirname "$PYTHON_CLIENT")"
  /usr/bin/python3 -m venv "$PYTHON_CLIENT"
  "$PYTHON_CLIENT/bin/pip" install -q "kubernetes>=30"
}

# The Docker engine for the Docker runtime, unless one answers already. Without its bridge
# and iptables rules: kemu wires the pods' network itself, and nothing may change the root
# namespace's addresses, routes or rules. In a mount namespace of its own (a slave of the
# root's, so it sees what is mounted later): its containers' root filesystems and network
# namespace pins stay out of the root namespace's mount table, which tests compare before and
# after their labs. Its log: target/dockerd.log.
start_dockerd() {
  local sock=/var/run/docker.sock
  if curl -sf --unix-socket "$sock" http://docker/_ping >/dev/null 2>&1; then
    return 0
  fi
  mkdir -p target
  echo "starting dockerd (log: target/dockerd.log)"
  nohup unshare --mount --propagation slave dockerd --iptables=false --ip6tables=false --bridge=none \
    >target/dockerd.log 2>&1 </dev/null &
  # Not one of this script's jobs: the test runner counts and waits for its own jobs only.
  disown $!
  for _ in $(seq 1 60); do
    curl -sf --unix-socket "$sock" http://docker/_ping >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "dockerd did not answer on $sock within 30 s; its log:" >&2
  tail -n 30 target/dockerd.log >&2
  exit 1
}

# Build kemu, the proxy and the NetworkPolicy agents (release profile) and the kubelet and flanneld (node-agents
# profile, built for size: Cargo.toml), put them side by side in bin/, where kemu looks for its agents, and
# link ./kemu to bin/kemu. Copies, so that a later cargo build does not change what bin/ holds
# without the other binaries.
build() {
  local target
  target="target/$(rustc -vV | sed -n 's/^host: //p')"
  cargo build --release --locked --bin kemu --bin kemu-proxy --bin kemu-netpol
  cargo build --profile node-agents --locked --bin kemu-kubelet --bin kemu-flanneld
  mkdir -p bin
  cp -f "$target/release/kemu" "$target/release/kemu-proxy" "$target/release/kemu-netpol" \
    "$target/node-agents/kemu-kubelet" "$target/node-agents/kemu-flanneld" bin/
  ln -sfn bin/kemu kemu
}

# Build every test binary, then run them TEST_JOBS at a time (default 3): most of a lab test's
# time is spent waiting on agents, not on the CPU, and every test makes labs of unique names.
# Each binary's output goes to target/test-logs/; a failing one is printed whole at the end.
run_tests() {
  local logs=target/test-logs jobs=${TEST_JOBS:-3} failed=() bins=() exe name
  mkdir -p target
  cargo test --locked --no-run 2>&1 | tee target/test-build.log
  mapfile -t bins < <(sed -n 's/^ *Executable .*(\(.*\))$/\1/p' target/test-build.log)
  rm -rf "$logs" && mkdir -p "$logs"
  [ ${#bins[@]} -gt 0 ] || { echo "no test binaries found" >&2; exit 1; }
  # Suites that time faults against a live lab (an API server killed every 300 ms, partitions
  # timed against the node grace period) run last and alone: other labs' load distorts them.
  local alone_pattern='^(crash_loop|scenarios)-'
  run_one() {
    local exe=$1 name start r
    name=$(basename "$exe")
    echo "running $name"
    start=$SECONDS; if "$exe" >"$logs/$name.log" 2>&1; then r=ok; else r=FAILED; fi
    echo "$r $name $((SECONDS - start)) s" | tee -a "$logs/summary"
  }
  for exe in "${bins[@]}"; do
    [[ $(basename "$exe") =~ $alone_pattern ]] && continue
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    run_one "$exe" &
  done
  wait
  for exe in "${bins[@]}"; do
    [[ $(basename "$exe") =~ $alone_pattern ]] && run_one "$exe"
  done
  # Each binary's own counts, as `cargo test` prints them, so that a log reader sees what ran.
  for exe in "${bins[@]}"; do
    name=$(basename "$exe")
    echo "     Running $name"
    grep -E '^(running [0-9]+ tests?|test result: )' "$logs/$name.log" || echo "no test result line"
  done
  sort -k3 -n -r "$logs/summary" 2>/dev/null | sed 's/^/  /'
  while read -r r name _; do [ "$r" = ok ] || failed+=("$name"); done <"$logs/summary"
  if [ "$(wc -l <"$logs/summary")" -ne ${#bins[@]} ]; then
    echo "some test binaries did not report" >&2; exit 1
  fi
  for name in "${failed[@]}"; do echo "=== $name"; cat "$logs/$name.log"; done
  if [ ${#failed[@]} -gt 0 ]; then echo "FAILED: ${failed[*]}" >&2; exit 1; fi
  echo "all ${#bins[@]} test binaries passed"
  cargo test --locked --doc
}

case "${1:-up}" in
  deps)
    need_root "$@"; deps ;;
  build)
    need_root "$@"; deps
    build ;;
  up)
    need_root "$@"; deps
    build
    kemu=./kemu
    if [ -d /run/kemu/seed ]; then
      echo "lab seed is already up; 'sudo $kemu down seed' to start afresh"
    else
      $kemu up topologies/seed.yaml
    fi
    # The article's steps: the nginx RC and its two services, created from the master.
    kubectl=($kemu exec seed 192.168.0.201 -- kubectl -s http://192.168.0.201:8080)
    "${kubectl[@]}" apply -f examples/seed/
    # `kubectl wait` fails at once while the controller has not created the pods yet.
    for _ in $(seq 100); do
      [ "$("${kubectl[@]}" get pods -l name=nginx -o name | wc -l)" -ge 2 ] && break
      sleep 0.1
    done
    "${kubectl[@]}" wait --for=condition=Ready pods -l name=nginx --timeout=120s
    port=$("${kubectl[@]}" get svc nginx-service-nodeport -o 'jsonpath={.spec.ports[0].nodePort}')
    echo "from the outside client: curl http://192.168.0.202:$port"
    for _ in $(seq 50); do
      if $kemu exec seed client -- curl -s -m 2 "http://192.168.0.202:$port"; then break; fi
      sleep 0.2
    done ;;
  test)
    need_root "$@"; deps
    run_tests ;;
  *)
    echo "usage: $0 up|test|build|deps" >&2; exit 2 ;;
esac
