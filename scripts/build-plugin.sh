#!/usr/bin/env bash
# Build the managed (v2) Docker plugin offline, with no registry: a rootfs from the local `node`
# binary and its libraries, the built project (dist/) with production dependencies only, and the
# kernel tools the daemon runs (ip, bridge, iptables/ip6tables with the host's backend and their
# xtables modules, ipset, nsenter), then `docker plugin create` and `docker plugin enable`.
#
#   scripts/build-plugin.sh [--name calico:latest] [--replace] [--set KEY=VALUE]... [--no-enable]
#                           [--docker-exec-root /var/run/docker] [--rootfs-only DIR] [--keep]
#
# Run `npm run build` first (dist/ is packaged as it is). The docker CLI honours DOCKER_HOST, so
# the plugin can be installed into any dockerd. --set applies `docker plugin set` while the plugin
# is still disabled (e.g. --set ETCD_ENDPOINTS=http://10.0.0.1:2379, --set docker-socket.source=...).
# --docker-exec-root: the engine's --exec-root, whose netns/ directory holds the containers'
# network namespaces (Docker passes their paths in Join; the plugin must see them at that path).
# --rootfs-only DIR: assemble DIR/config.json and DIR/rootfs and stop (no docker call).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=calico:latest
replace=false
enable=true
keep=false
exec_root=/var/run/docker
only_dir=
sets=()
links=()

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "build-plugin: $*" >&2; exit 1; }

while (($# > 0)); do
  case $1 in
    --name) name=${2:?--name needs a value}; shift 2 ;;
    --replace) replace=true; shift ;;
    --no-enable) enable=false; shift ;;
    --keep) keep=true; shift ;;
    --set) sets+=("${2:?--set needs KEY=VALUE}"); shift 2 ;;
    --docker-exec-root) exec_root=${2:?--docker-exec-root needs a directory}; shift 2 ;;
    --rootfs-only) only_dir=${2:?--rootfs-only needs a directory}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "build-plugin: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ $name == *:* ]] || name="$name:latest"
[[ $exec_root == /* ]] || die "--docker-exec-root must be an absolute path, got '$exec_root'"
[[ -f $here/dist/bin/calico-libnetwork.js ]] || die "no dist/bin/calico-libnetwork.js: run 'npm run build' first"
[[ -d $here/node_modules ]] || die "no node_modules: run 'npm ci' (scripts/setup.sh) first"
[[ $(id -u) -eq 0 ]] || die "run as root (docker plugin create, chroot check)"

if [[ -n $only_dir ]]; then
  mkdir -p "$only_dir"
  [[ -z $(ls -A "$only_dir") ]] || die "--rootfs-only: $only_dir is not empty"
  work=$(cd "$only_dir" && pwd)
  keep=true
else
  work=$(mktemp -d /tmp/calico-plugin-XXXXXX)
fi
cleanup() { if [[ $keep == false ]]; then rm -rf "$work"; fi; }
trap cleanup EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs"/{usr/local/bin,usr/sbin,usr/bin,etc,tmp,proc,sys,dev,run,host/proc,var/lib/calico-libnetwork,opt}
chmod 1777 "$rootfs/tmp"
# As on Debian: /var/run is /run, so /var/run/docker/... and /run/docker/... are one path.
ln -s ../run "$rootfs/var/run"

# Executables and libraries are collected first and copied in one go at their own paths
# (following symlinks: merged /usr has /lib → usr/lib), with every shared library they load.
files=()
tool() {
  local t
  t=$(command -v "$1") || die "'$1' is not installed (scripts/setup.sh installs it)"
  echo "$t"
}

# node: the entrypoint of plugin-config.json runs /usr/local/bin/node.
node_bin=$(readlink -f "$(tool node)")
cp -L --preserve=mode "$node_bin" "$rootfs/usr/local/bin/node"
files+=("$node_bin")

# iproute2 (ip, bridge), ipset, and nsenter (routing inside containers on several networks).
for t in ip bridge nsenter ipset; do
  files+=("$(readlink -f "$(tool "$t")")")
  [[ $(readlink -f "$(tool "$t")") == "$(tool "$t")" ]] || links+=("$(tool "$t")")
done

# iptables: the same backend as the host (both write the same kernel tables; mixing nf_tables and
# legacy would leave the host's and the plugin's rules invisible to each other).
backend=$(iptables -V | sed -n 's/.*(\(.*\)).*/\1/p')
[[ $backend == nf_tables || $backend == legacy ]] || die "cannot tell iptables' backend from '$(iptables -V)'"
multi=$(readlink -f "$(tool iptables)")
case $backend in
  nf_tables) [[ $(basename "$multi") == xtables-nft-multi ]] || die "iptables is nf_tables but resolves to $multi" ;;
  legacy) [[ $(basename "$multi") == xtables-legacy-multi ]] || die "iptables is legacy but resolves to $multi" ;;
esac
files+=("$multi")
# The match and target modules (libxt_*.so, ...) live next to libxtables, in its xtables/
# directory; the plugin sees them at the same path, where this iptables looks for them.
libxtables=$(ldd "$multi" | awk '$1 ~ /^libxtables\.so/ { print $3 }')
[[ -n $libxtables ]] || die "cannot find libxtables of $multi"
xtdir=$(dirname "$(readlink -f "$libxtables")")/xtables
[[ -d $xtdir ]] || xtdir=$(dirname "$libxtables")/xtables
[[ -d $xtdir ]] || die "no xtables module directory next to $libxtables"
files+=("$xtdir"/*.so)

# One ldd over everything: the loader and every library, by the paths the loader resolves.
mapfile -t libs < <(ldd "${files[@]}" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u)
((${#libs[@]} > 3)) || die "ldd found no libraries"
unset 'files[0]' # node is at /usr/local/bin/node already
extra=()
for l in "${links[@]}"; do extra+=("$l"); done
# tar -h stores each file's content under the path named (no leading /), creating its directories.
tar -chPf - --transform 's,^/,,' "${files[@]}" "${libs[@]}" "${extra[@]}" 2>/dev/null | tar -xf - -C "$rootfs"
for f in "${files[@]}" "${libs[@]}" "${extra[@]}"; do [[ -f $rootfs$f ]] || die "$f was not copied into the rootfs"; done
for t in iptables ip6tables iptables-restore iptables-save ip6tables-restore ip6tables-save; do
  ln -sf "$multi" "$rootfs/usr/sbin/$t"
done

# Files the tools and node read: protocol and service names, the resolver's host table.
for f in /etc/protocols /etc/services /etc/ethertypes; do if [[ -f $f ]]; then cp -L "$f" "$rootfs/etc/"; fi; done
for d in /etc/iproute2 /usr/share/iproute2 /usr/lib/iproute2; do
  if [[ -d $d ]]; then mkdir -p "$rootfs$d" && cp -rL "$d/." "$rootfs$d/"; fi
done
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
echo 'root:x:0:' >"$rootfs/etc/group"
# The loader's search path for the libraries copied above.
ldconfig -r "$rootfs" 2>/dev/null || true

# The project: dist/ without tests and scripts, production dependencies only (npm's cache, no registry).
app=$rootfs/opt/calico-libnetwork
mkdir -p "$app"
cp -a "$here/dist" "$app/dist"
rm -rf "$app/dist/test" "$app/dist/scripts"
cp "$here/package.json" "$here/package-lock.json" "$here/README.md" "$app/"
# Hard links when /tmp and the checkout share a filesystem (npm prune only unlinks), else a copy.
cp -al "$(readlink -f "$here/node_modules")" "$app/node_modules" 2>/dev/null \
  || { rm -rf "$app/node_modules"; cp -a "$(readlink -f "$here/node_modules")" "$app/node_modules"; }
(cd "$app" && npm prune --omit=dev --offline --no-audit --no-fund --loglevel=error >/dev/null)
# After the prune (which may run the install script, whose rebuild would clean it): the netlink
# addon, where dist/dataplane/netlink/socket.js looks for it (without it: `ip`).
if [[ -f $here/native/build/Release/calico_netlink.node ]]; then
  mkdir -p "$app/native/build/Release"
  cp "$here/native/build/Release/calico_netlink.node" "$app/native/build/Release/"
fi

# The manifest, with the containers' namespace directory of this engine (Join hands its paths).
netns_dir=${exec_root%/}/netns
node -e '
  const fs = require("fs");
  const [src, dst, netns] = process.argv.slice(1);
  const c = JSON.parse(fs.readFileSync(src, "utf8"));
  const m = c.mounts.find((x) => x.name === "netns");
  if (m === undefined) throw new Error("plugin-config.json has no mount named netns");
  m.source = netns;
  m.destination = netns;
  fs.writeFileSync(dst, JSON.stringify(c, null, 2) + "\n");
' "$here/plugin-config.json" "$work/config.json" "$netns_dir"

# Sanity: everything the daemon execs starts inside the rootfs with the copied libraries alone.
in_rootfs() { env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin chroot "$rootfs" "$@"; }
in_rootfs /usr/local/bin/node -e 'require("/opt/calico-libnetwork/dist/config/config.js")' \
  || die "node cannot load the project inside the rootfs"
for t in "ip -V" "bridge -V" "nsenter --version" "ipset version" "iptables -V" "ip6tables-restore --version" "iptables-save --version"; do
  read -ra argv <<<"$t"
  out=$(in_rootfs "${argv[@]}" 2>&1) || die "'$t' fails inside the rootfs: $out"
done
in_rootfs iptables -V | grep -q "($backend)" || die "iptables inside the rootfs is not $backend"

if [[ -n $only_dir ]]; then
  echo "build-plugin: rootfs in $work (config.json, rootfs/); $(du -sh "$rootfs" | cut -f1)"
  exit 0
fi

# Docker refuses to start a plugin whose bind-mount source is missing: create the directories.
# The namespace directory must pass mounts made later (each container's namespace) into the
# plugin (the manifest mounts it rslave): on a host whose mounts are private (no systemd), make it
# a shared mount point of its own. Docker unmounts a namespace when its container goes; the
# unmount reaches the plugin the same way, so the plugin never keeps a namespace alive.
prepare_mounts() {
  local plugin=$1 mname src
  while read -r mname src; do
    case $mname in
      state|etcd-certs) mkdir -p "$src" ;;
      netns)
        mkdir -p "$src"
        if [[ $(findmnt -no PROPAGATION --target "$src" | head -1) != shared* ]]; then
          if ! findmnt -n --mountpoint "$src" >/dev/null; then mount --bind "$src" "$src"; fi
          mount --make-shared "$src"
          echo "build-plugin: made $src a shared mount (its file system was private)"
        fi
        ;;
      docker-socket) [[ -S $src ]] || echo "build-plugin: warning: no Docker socket at $src (set docker-socket.source)" >&2 ;;
    esac
  done < <(docker plugin inspect -f '{{range .Settings.Mounts}}{{.Name}} {{.Source}}{{"\n"}}{{end}}' "$plugin")
}

# Install: create (replacing an existing plugin of that name only when asked), set, enable.
if docker plugin inspect "$name" >/dev/null 2>&1; then
  [[ $replace == true ]] || die "plugin $name exists: pass --replace to disable and remove it first (its networks must have no containers)"
  docker plugin disable -f "$name" >/dev/null 2>&1 || true
  docker plugin rm -f "$name" >/dev/null
fi
docker plugin create "$name" "$work" >/dev/null
for kv in "${sets[@]}"; do docker plugin set "$name" "$kv"; done
if [[ $enable == true ]]; then
  prepare_mounts "$name"
  docker plugin enable --timeout 60 "$name" >/dev/null
fi
echo "build-plugin: $name created$([[ $enable == true ]] && echo ' and enabled') ($(du -sh "$rootfs" | cut -f1) rootfs, iptables $backend)"
