#!/usr/bin/env bash
# build_etcd_benchmark.sh — builds etcd's own `benchmark` tool (etcd's tools/benchmark, which no Debian binary
# package ships) offline from Debian-only inputs: the Debian source package of etcd 3.4 (downloaded through a
# private deb-src list in a temp dir; /etc/apt is not changed) + Debian's golang-go and -dev packages, in GOPATH
# mode (GO111MODULE=off: no Go module proxy). Same recipe as shared/peers/06b_build_etcd_benchmark.sh.
#
# Usage: build_etcd_benchmark.sh [OUT]   (default ${INGOT_PEERS_HOME:-$HOME/.cache/ingot-peers}/etcd-benchmark)
# Skips the build when OUT already runs. Needs root for apt-get install (only when packages are missing).
set -euo pipefail
PEERS_HOME=${INGOT_PEERS_HOME:-$HOME/.cache/ingot-peers}
OUT=${1:-$PEERS_HOME/etcd-benchmark}
mkdir -p "$(dirname "$OUT")"
if [ -x "$OUT" ] && "$OUT" --help >/dev/null 2>&1; then
  echo "build_etcd_benchmark: ok: $OUT already built"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
PKGS=(golang-go golang-etcd-server-dev golang-github-spf13-cobra-dev golang-gopkg-cheggaaa-pb.v1-dev
      golang-golang-x-time-dev golang-github-bgentry-speakeasy-dev golang-github-dustin-go-humanize-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
t0=$(date +%s)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "build_etcd_benchmark: running: apt-get update; apt-get install -y --no-install-recommends ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "build_etcd_benchmark: apt-get took $(( $(date +%s) - t0 )) s"
fi

T=$(mktemp -d "${TMPDIR:-/tmp}/ingot-etcdbuild.XXXXXX")
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/parts" "$T/lists/partial" "$T/src"
cat >"$T/parts/src.sources" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
O=(-o APT::Sandbox::User=root -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$T/parts" -o Dir::State::Lists="$T/lists")
t1=$(date +%s)
echo "build_etcd_benchmark: fetching the Debian source package of etcd"
timeout 600 apt-get "${O[@]}" update -qq
(cd "$T/src" && timeout 600 apt-get "${O[@]}" source --download-only etcd >/dev/null 2>&1 && tar xzf etcd_*.orig.tar.gz)
echo "build_etcd_benchmark: source fetched in $(( $(date +%s) - t1 )) s"
mkdir -p "$T/gopath/src/go.etcd.io/etcd/tools"
cp -r "$T"/src/etcd-*/tools/benchmark "$T/gopath/src/go.etcd.io/etcd/tools/"
t2=$(date +%s)
(cd "$T/gopath/src/go.etcd.io/etcd/tools/benchmark" &&
  GO111MODULE=off GOPATH="$T/gopath:/usr/share/gocode" GOCACHE="$T/gocache" GOFLAGS='' \
    timeout 1800 go build -o "$OUT.tmp" . && mv -f "$OUT.tmp" "$OUT")
echo "build_etcd_benchmark: built $OUT: go build $(( $(date +%s) - t2 )) s, total $(( $(date +%s) - t0 )) s ($(go version))"
