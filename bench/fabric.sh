#!/usr/bin/env bash
# Benchmark: `kemu up` / `kemu down` of the network alone (no agents) for 3, 100 and 500 hosts,
# wall time and peak memory, and Mininet building the same 100-host network on the same
# machine in the same run. Writes its figures into BENCHMARKS.md (section "fabric").
#
#   sudo bench/fabric.sh            # needs root; installs mininet, bridge-utils and time
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: sudo $0" >&2; exit 1; }
for p in mininet bridge-utils time bc; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
    apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null; }
done
cargo build --release --locked -q
KEMU=./target/$(rustc -vV | sed -n 's/^host: //p')/release/kemu
tmp=$(mktemp -d); trap 'rm -rf "$tmp"; $KEMU down --all >/dev/null 2>&1 || true' EXIT

# The kernel frees deleted namespaces in the background (cleanup_net); until it is done, new
# namespaces are slow to create. settle waits for that and prints how long it took.
settle() {
  local start=$(date +%s%N)
  while :; do
    local t0=$(date +%s%N)
    ip netns add kemu-bench-probe && ip netns del kemu-bench-probe
    local t1=$(date +%s%N)
    [ $(( (t1 - t0) / 1000000 )) -lt 15 ] && break
    sleep 0.05
  done
  printf "%.2f\n" "$(echo "($(date +%s%N) - $start) / 1000000000" | bc -l)"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# measure N RUNS: prints "up_median down_median peak_kb_max"
measure() {
  local hosts=$1 runs=$2 file="$tmp/h$1.yaml"
  $KEMU generate --hosts "$hosts" --name "bench$hosts" > "$file"
  : > "$tmp/up"; : > "$tmp/down"; : > "$tmp/peak"; : > "$tmp/settle"
  settle >/dev/null
  for _ in $(seq "$runs"); do
    /usr/bin/time -f "%e %M" -o "$tmp/t" $KEMU up "$file" --network-only >/dev/null
    read -r wall peak < "$tmp/t"; echo "$wall" >> "$tmp/up"; echo "$peak" >> "$tmp/peak"
    /usr/bin/time -f "%e %M" -o "$tmp/t" $KEMU down "bench$hosts" >/dev/null
    read -r wall _ < "$tmp/t"; echo "$wall" >> "$tmp/down"
    settle >> "$tmp/settle"
  done
  echo "$(median < "$tmp/up") $(median < "$tmp/down") $(sort -n "$tmp/peak" | tail -1) $(median < "$tmp/settle")"
}

read -r up3 down3 peak3 clean3 < <(measure 3 5)
read -r up100 down100 peak100 clean100 < <(measure 100 3)
read -r up500 down500 peak500 clean500 < <(measure 500 1)

# Mininet in a private network namespace so it cannot touch the machine's own links.
mn_runs=""
settle >/dev/null
for _ in 1 2 3; do
  /usr/bin/time -f "%e %M" -o "$tmp/t" unshare --net -- sh -c \
    'ip link set lo up; mn --switch lxbr --controller none --topo single,100 --test none' >"$tmp/mn.log" 2>&1
  read -r wall _ < "$tmp/t"; mn_runs="$mn_runs $wall"
  settle >/dev/null
done
mn100=$(echo $mn_runs | tr ' ' '\n' | median)
kemu100=$(printf "%.2f" "$(echo "$up100 + $down100" | bc -l)")
ratio=$(echo "scale=1; $mn100 / $kemu100" | bc -l)

section="$tmp/section.md"
cat > "$section" <<MD
<!-- fabric:begin -->
## Fabric: \`kemu up\` / \`kemu down\` of the network alone

Reproduce with \`sudo bench/fabric.sh\` (release build, \`--network-only\`: namespaces, underlay,
router, pod bridges and the full flannel vxlan mesh, no agents). Median of 5 / 3 / 1 runs;
peak memory is the launcher's maximum RSS. Measured $(date -u +%Y-%m-%d) on $(nproc) cores, kernel $(uname -r).

| hosts | kernel operations | \`up\` wall | \`down\` wall | \`up\` peak memory | kernel cleanup after \`down\` |
|---:|---:|---:|---:|---:|---:|
| 3 | $($KEMU generate --hosts 3 > "$tmp/c.yaml"; $KEMU up --dry-run --network-only "$tmp/c.yaml" | head -1 | sed 's/.*, \([0-9]*\) kernel.*/\1/') | ${up3} s | ${down3} s | $((peak3 / 1024)) MiB | ${clean3} s |
| 100 | $($KEMU generate --hosts 100 > "$tmp/c.yaml"; $KEMU up --dry-run --network-only "$tmp/c.yaml" | head -1 | sed 's/.*, \([0-9]*\) kernel.*/\1/') | ${up100} s | ${down100} s | $((peak100 / 1024)) MiB | ${clean100} s |
| 500 | $($KEMU generate --hosts 500 > "$tmp/c.yaml"; $KEMU up --dry-run --network-only "$tmp/c.yaml" | head -1 | sed 's/.*, \([0-9]*\) kernel.*/\1/') | ${up500} s | ${down500} s | $((peak500 / 1024)) MiB | ${clean500} s |

Mininet on the same machine in the same run, \`mn --switch lxbr --controller none --topo
single,100 --test none\` (build and tear down 100 hosts on one Linux bridge; median of 3):
**${mn100} s**, against ${kemu100} s for kemu's \`up\` + \`down\` of 100 hosts, which also builds
a router and the overlay: **${ratio}x faster**.

\`down\` returns once every namespace is unpinned; the kernel then frees them in the background
(\`cleanup_net\`), which on this VM costs about 30-40 ms per host that owns a bridge (\`cbr0\`).
The last column is how long that took (measured by probing namespace creation until it is fast
again); every \`up\` above started on a settled kernel, and so did every Mininet run.
<!-- fabric:end -->
MD

touch BENCHMARKS.md
grep -q '^# kemu benchmarks' BENCHMARKS.md || printf '# kemu benchmarks\n\nEvery figure comes from a script under bench/ that rewrites its own section.\n\n' > BENCHMARKS.md
if grep -q '<!-- fabric:begin -->' BENCHMARKS.md; then
  awk -v f="$section" '/<!-- fabric:begin -->/{while((getline l < f)>0) print l; skip=1} !skip{print} /<!-- fabric:end -->/{skip=0}' BENCHMARKS.md > "$tmp/b" && cp "$tmp/b" BENCHMARKS.md
else
  cat "$section" >> BENCHMARKS.md
fi
sed -n '/<!-- fabric:begin -->/,/<!-- fabric:end -->/p' BENCHMARKS.md
