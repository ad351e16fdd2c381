#!/usr/bin/env bash
# Installs the system packages pussh's tests, benchmarks and demo need (Debian 12, root).
# Docker 26 and containerd 1.7 come from Debian's trixie suite; everything else, runc and every dependency
# included, from the machine's own release: trixie is pinned below the default and named per package
# (pkg/trixie), so apt takes from it only docker.io, containerd and the docker CLI parts they pull in.
# (trixie's runc needs trixie's libc6, which would drag the base system and python3 along.)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=(dockerd containerd sshd skopeo podman busybox debootstrap ip iptables tc docker-registry)
missing=0
for c in "${need[@]}"; do command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || [ -x "/usr/bin/$c" ] || missing=1; done
[ -x /usr/lib/openssh/sftp-server ] || missing=1
python3 -c 'import sys' 2>/dev/null || missing=1
if [ "$missing" = 0 ] && dockerd --version 2>/dev/null | grep -q 'version 2[6-9]'; then exit 0; fi
[ "$(id -u)" = 0 ] || { echo "install-system.sh: run as root, or with sudo (it runs apt-get)" >&2; exit 1; }

# trixie as a source (unless one is configured already), and the pin that keeps it below the machine's own
# release (always: a trixie source without it would make apt take every newer trixie version).
if ! grep -rqs 'trixie' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  # The machine's mirror: from debian.sources (deb822) or, on older setups, sources.list.
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 !~ /^\[/ && $3 == "bookworm" {print $2; exit}' \
    /etc/apt/sources.list 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  cat > /etc/apt/sources.list.d/trixie.sources <<SRC
Types: deb
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
if ! grep -rqs 'release n=trixie' /etc/apt/preferences /etc/apt/preferences.d/; then
  cat > /etc/apt/preferences.d/trixie-low <<PIN
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
fi
apt-get update -q
# The packages start their own services on install where systemd runs; we run our own daemons instead.
apt-get install -y -q docker.io/trixie containerd/trixie runc openssh-server openssh-client busybox-static \
  skopeo docker-registry debootstrap iproute2 iptables sudo zstd python3-venv podman
