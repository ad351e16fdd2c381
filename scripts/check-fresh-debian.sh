#!/usr/bin/env bash
# Proves that scripts/install-system.sh leaves a fresh Debian 12 machine as it was, apart from what it
# installs: debootstraps a minimal bookworm root filesystem, runs `bash scripts/install-system.sh` (from a
# clean `git archive` of HEAD) inside it as root, and reports before and after: python3 --version, the
# number of installed packages, which packages changed version, and which installed versions come from
# a suite other than the machine's release (bookworm, bookworm-updates, bookworm-security).
# Then runs the script a second time (its fast path: exit 0, no apt). Tears the chroot down at the end.
# Needs root, debootstrap and Debian's package mirror; nothing on the host is installed or changed.
# Usage: scripts/check-fresh-debian.sh [> scripts/fresh-debian-check.txt]   (progress goes to stderr)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "check-fresh-debian.sh: run as root (or with sudo): it debootstraps and chroots" >&2; exit 1; }
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] \
  || { echo "check-fresh-debian.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
mirror=${MIRROR:-http://deb.debian.org/debian}
security=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
head=$(git rev-parse HEAD)

root=$(mktemp -d /var/tmp/pussh-fresh-debian.XXXXXX)
mounts=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" || true
  done
  # --one-file-system: never descends into anything still mounted (the host's /dev, /proc, /sys).
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT
mnt() { mount "$@"; mounts+=("${@: -1}"); }
in_root() { chroot "$root" /usr/bin/env -i PATH="$PATH" LC_ALL=C HOME=/root DEBIAN_FRONTEND=noninteractive "$@"; }
log() { echo "check-fresh-debian: $*" >&2; }

log "debootstrap --variant=minbase bookworm $root $mirror"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.debootstrap.log" 2>&1 \
  || { tail -20 "$root.debootstrap.log" >&2; exit 1; }
rm -f "$root.debootstrap.log"

mnt -t proc proc "$root/proc"
mnt -t sysfs sysfs "$root/sys"
mnt --bind /dev "$root/dev"
mnt -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# No service starts inside the chroot (what policy-rc.d is for; deb-systemd-invoke honours it too).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
# The machine's release, as the host's debian.sources has it: bookworm, bookworm-updates, bookworm-security.
cat >"$root/etc/apt/sources.list" <<SRC
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SRC
rm -f "$root"/etc/apt/sources.list.d/*
mkdir -p "$root/root/pussh"
git archive HEAD | tar -x -C "$root/root/pussh"

# A Debian 12 machine has python3 (minbase does not): install it from bookworm first, and apply
# bookworm-updates/-security, so "before" is an up-to-date Debian 12.
log "apt-get update; upgrade; install python3 (bookworm)"
{ in_root apt-get update -q && in_root apt-get -y -q upgrade \
    && in_root apt-get install -y -q --no-install-recommends python3; } >"$root/prepare.log" 2>&1 \
  || { tail -30 "$root/prepare.log" >&2; exit 1; }

# name=version for every installed package; and, after the install, every installed version that no
# bookworm suite carries (with the suites that do carry it), from `apt list --installed`.
snapshot() { in_root dpkg-query -W -f '${db:Status-Abbrev} ${binary:Package}=${Version}\n' | awk '$1 ~ /^.i/ {print $2}' | sort; }
foreign() {
  # apt list names archives by suite (oldstable, stable, ...): map them to codenames from the Release files.
  local f
  for f in "$root"/var/lib/apt/lists/*_InRelease; do
    awk '/^Suite:/ {s = $2} /^Codename:/ {c = $2} END {print s, c}' "$f"
  done >"$root/suites.txt"
  in_root apt list --installed 2>/dev/null | awk -F'[/ ]' -v map="$root/suites.txt" '
    BEGIN { while ((getline line < map) > 0) { split(line, p, " "); code[p[1]] = p[2] } }
    /\[installed/ {
      n = split($2, s, ","); ok = 0; from = ""
      for (i = 1; i <= n; i++) {
        if (s[i] == "now") continue
        c = (s[i] in code) ? code[s[i]] : s[i]
        if (c ~ /^bookworm/) ok = 1
        from = from (from ? "," : "") c
      }
      if (!ok) printf "%s=%s (%s)\n", $1, $3, from ? from : "no archive" }'
}

py_before=$(in_root python3 --version 2>&1)
snapshot >"$root/before.txt"
foreign >"$root/foreign-before.txt"

log "chroot: bash scripts/install-system.sh"
set +e
in_root /bin/bash -c 'cd /root/pussh && bash scripts/install-system.sh' >"$root/install.log" 2>&1
rc=$?
set -e
[ "$rc" = 0 ] || tail -30 "$root/install.log" >&2

py_after=$(in_root python3 --version 2>&1)
snapshot >"$root/after.txt"
foreign >"$root/foreign.txt"
# Packages present before whose version changed.
join -t= -j1 <(sort -t= -k1,1 "$root/before.txt") <(sort -t= -k1,1 "$root/after.txt") \
  | awk -F= '$2 != $3 {print $1 ": " $2 " -> " $3}' >"$root/changed.txt"

log "chroot: bash scripts/install-system.sh (again: the fast path)"
set +e
t0=$(date +%s.%N)
in_root /bin/bash -c 'cd /root/pussh && bash scripts/install-system.sh' >"$root/again.log" 2>&1
rc2=$?
t1=$(date +%s.%N)
set -e

echo "# Fresh Debian 12 check of scripts/install-system.sh (scripts/check-fresh-debian.sh)"
echo "date:      $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "git HEAD:  $head"
echo "rootfs:    debootstrap --variant=minbase bookworm $mirror; apt sources bookworm, bookworm-updates, bookworm-security"
echo "prepared:  apt-get upgrade; apt-get install --no-install-recommends python3 (minbase has no python3; a Debian 12 machine does)"
echo "ran:       chroot, /root/pussh = git archive HEAD: bash scripts/install-system.sh  -> exit $rc"
echo
echo "                           before               after"
printf '%-26s %-20s %s\n' "python3 --version" "$py_before" "$py_after"
printf '%-26s %-20s %s\n' "installed packages" "$(wc -l <"$root/before.txt")" "$(wc -l <"$root/after.txt")"
printf '%-26s %-20s %s\n' "versions changed" "-" "$(wc -l <"$root/changed.txt")"
printf '%-26s %-20s %s\n' "not from bookworm*" "$(wc -l <"$root/foreign-before.txt")" "$(wc -l <"$root/foreign.txt")"
printf '%-26s %-20s %s\n' "from trixie" "$(grep -c '(trixie' "$root/foreign-before.txt" || true)" "$(grep -c '(trixie' "$root/foreign.txt" || true)"
echo
echo "Installed packages whose version is not from bookworm, bookworm-updates or bookworm-security:"
sed 's/^/  /' "$root/foreign.txt"
echo
echo "Packages installed before whose version changed:"
if [ -s "$root/changed.txt" ]; then sed 's/^/  /' "$root/changed.txt"; else echo "  (none)"; fi
echo
echo "apt configuration install-system.sh added:"
for f in "$root"/etc/apt/sources.list.d/* "$root"/etc/apt/preferences.d/*; do
  [ -f "$f" ] && printf '  %s: %s\n' "${f#"$root"}" "$(grep -v '^#' "$f" | grep . | paste -sd ';' | sed 's/;/; /g')"
done
echo
echo "Installed tools:"
for c in "dockerd --version" "containerd --version" "runc --version" "docker --version" "docker buildx version" "skopeo --version" "ssh -V"; do
  printf '  %-22s %s\n' "$c:" "$(in_root sh -c "$c" 2>&1 | head -1)"
done
echo
printf 'Second run (fast path): exit %s in %.1fs, output: %s\n' "$rc2" "$(awk "BEGIN{print $t1 - $t0}")" \
  "$([ -s "$root/again.log" ] && head -c 200 "$root/again.log" || echo '(none)')"
[ "$rc" = 0 ] && [ "$rc2" = 0 ]
