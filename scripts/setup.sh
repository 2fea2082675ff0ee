#!/usr/bin/env bash
# Install what the project and its tests need on a fresh Debian 12 machine (run as root), then the
# npm dependencies. Idempotent: packages already installed are not fetched again, and `npm ci` runs
# only when node_modules is missing or older than package-lock.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# docker.io: dockerd/containerd/runc for e2e tests (an isolated dockerd per suite)
# etcd-server: the etcd datastore backend and its tests
# iptables, ipset, conntrack: FORWARD accept chain and the policy engine
# iproute2: veths, routes, namespaces (ip -json, ip -batch)
# procps: sysctl (`ip netns exec NS sysctl` in tests)
# busybox-static: ping/ping6 in namespace tests, and the rootfs of the e2e test image
# netcat-openbsd: `nc -U` health checks on the plugin socket
# docker-compose: the compose front/back stack test (several networks per container)
# openssl: the certificates of the etcd TLS test (test/harness/tls-certs.ts)
# bird2: BIRD 2, the BGP speaker of CALICO_NETWORKING_BACKEND=bird (the daemon runs its own)
# g++, make, python3: node-gyp builds the netlink addon (native/) during `npm ci`; without them the
#   plugin runs `ip` for each container's veth instead
# ca-certificates, tar, util-linux (mount/umount/findmnt/nsenter): base tools the harnesses use and
#   scripts/build-plugin.sh copies or runs (with libc-bin's ldd and ldconfig and coreutils' chroot)
PACKAGES=(
  docker.io etcd-server iptables ipset conntrack iproute2 procps busybox-static netcat-openbsd
  docker-compose ca-certificates tar util-linux openssl bird2 g++ make python3
)

if [[ $(id -u) -ne 0 ]]; then
  echo "setup.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true) != installed ]]; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} > 0)); then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's bird2 starts a `bird` service of its own (/etc/bird/bird.conf, /run/bird/bird.ctl)
# where systemd runs. Nothing of ours uses it: the daemon runs its own BIRD with its own files.
if [[ -d /run/systemd/system ]] && systemctl list-unit-files bird.service >/dev/null 2>&1; then
  systemctl disable --now bird.service >/dev/null 2>&1 || true
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "setup.sh: node (>= 20.19) and npm are required" >&2
  exit 1
fi

if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json || ! -f native/build/Release/calico_netlink.node ]]; then
  echo "setup.sh: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi
echo "setup.sh: done"
