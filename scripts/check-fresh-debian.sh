#!/usr/bin/env bash
# Proves the README's two commands on a fresh Debian 12 machine: debootstraps a minimal bookworm root
# filesystem, puts a clean `git archive HEAD` of this repository at /root/pussh, and there, in a root
# login shell (no sudo), runs the README's commands as written: `./scripts/demo.sh` and, with
# --with-tests, `./scripts/test.sh`. Reports before and after: python3 --version, the number of
# installed packages, which packages changed version, and which installed versions come from a suite
# other than the machine's release (bookworm, bookworm-updates, bookworm-security); then runs
# scripts/install-system.sh once more (its fast path: exit 0, no apt).
#
# The fresh root is a machine of its own as far as the demo's daemons go: every command runs in new
# mount, PID, UTS, IPC and cgroup namespaces, with the root made the mount namespace's root by
# pivot_root (so `nsenter -m`, which the test bed uses, lands in the fresh root, not on the host), its
# own /proc, /sys, cgroup hierarchies (the host's, rooted at a cgroup this check makes and removes),
# /dev (the host's device nodes, a new devpts and /dev/shm), a tmpfs /run, and /tmp on its disk as
# bookworm has it. It shares the host's network (Debian's and PyPI's traffic goes out as the host's
# does; the demo makes its own network namespaces and veth pairs) and the host's test-bed slot locks
# (/run/pussh-testbed), so its veth names and addresses never collide with a test bed running on the
# host. No service starts on package install (policy-rc.d): there is no init; the demo runs its own.
#
# Behind a proxy, the root gets what a machine behind that proxy has: the host's CA bundle and local
# CAs (/etc/ssl/certs/ca-certificates.crt, /usr/local/share/ca-certificates), /etc/pip.conf, apt
# configuration that sets a proxy, and these variables where set: *_proxy, SSL_CERT_FILE,
# SSL_CERT_DIR, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, PIP_CERT, PIP_INDEX_URL, PIP_DEFAULT_TIMEOUT.
# Not this host's own wheel caches (PIP_FIND_LINKS, ~/.config/pip): pip goes to PyPI.
#
# Everything is torn down on every exit (Ctrl-C included): killing the namespaces' first process ends
# every process started in them (by the kernel, not by name), their mounts go with them, then the
# cgroups and the root directory are removed. Nothing on the host is installed or changed.
# Needs root, debootstrap, unshare and pivot_root (util-linux), Debian's mirror and PyPI.
# Usage: scripts/check-fresh-debian.sh [--with-tests] [--keep-logs DIR] [> scripts/fresh-debian-check.txt]
#        (progress goes to stderr; --keep-logs copies every step's full log to DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
with_tests=0 keep_logs=
while [ $# -gt 0 ]; do
  case $1 in
    --with-tests) with_tests=1 ;;
    --keep-logs) keep_logs=${2:?--keep-logs needs a directory}; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "check-fresh-debian.sh: unknown argument $1 (--with-tests, --keep-logs DIR)" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "check-fresh-debian.sh: run as root (or with sudo): it debootstraps and makes namespaces" >&2; exit 1; }
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
for c in debootstrap unshare pivot_root findmnt; do
  command -v "$c" >/dev/null || { echo "check-fresh-debian.sh: needs $c (apt-get install debootstrap util-linux)" >&2; exit 1; }
done
mirror=${MIRROR:-http://deb.debian.org/debian}
security=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
head=$(git rev-parse HEAD)
log() { echo "check-fresh-debian: $(date -u +%H:%M:%S) $*" >&2; }

root=$(mktemp -d /var/tmp/pussh-fresh-debian.XXXXXX)
chmod 755 "$root"  # it becomes / (mktemp makes it 0700: apt's _apt user and every non-root login need 0755)
w=$(mktemp -d /var/tmp/pussh-fresh-debian-logs.XXXXXX)  # logs and snapshots, outside the root
name=${root##*/}
cg_dirs=()   # the cgroups this check made (one per host hierarchy), each holding every process it starts
cg_specs=()  # fstype:options:dir of each hierarchy, mounted again inside (its root is then our cgroup)
upid=        # the running `unshare` (its own process group): the first process of the namespaces
interrupted=

# -- teardown --------------------------------------------------------------------------------------------
cg_pids() { local d; for d in "${cg_dirs[@]}"; do find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null; done | sort -un; }
cleanup() {
  local rc=$? i d
  trap '' INT TERM
  if [ -n "$upid" ]; then
    # unshare's death SIGKILLs the namespaces' first process (--kill-child); the kernel then kills the rest
    kill -KILL "$upid" 2>/dev/null || true
    wait "$upid" 2>/dev/null || true
  fi
  # Every process started in the namespaces is in our cgroups: wait until they are empty (kill by PID what
  # is left, which only a process of ours can be).
  for ((i = 0; i < 100; i++)); do
    [ -z "$(cg_pids)" ] && break
    [ "$i" -ge 20 ] && for p in $(cg_pids); do kill -KILL "$p" 2>/dev/null || true; done
    sleep 0.1
  done
  [ -z "$(cg_pids)" ] || echo "check-fresh-debian: processes left in our cgroups: $(cg_pids | paste -sd ' ')" >&2
  for d in "${cg_dirs[@]}"; do
    for ((i = 0; i < 50; i++)); do
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ -d "$d" ] || break
      sleep 0.1
    done
    [ -d "$d" ] && echo "check-fresh-debian: could not remove cgroup $d" >&2
  done
  if [ -n "$keep_logs" ]; then mkdir -p "$keep_logs" && cp -a "$w"/. "$keep_logs"/ && echo "check-fresh-debian: logs in $keep_logs" >&2; fi
  # --one-file-system: never descends into a mount (there is none on the host: all were in our namespaces)
  rm -rf --one-file-system "$root" "$w"
  [ -n "$interrupted" ] && exit 130
  exit "$rc"
}
trap cleanup EXIT
on_signal() {
  # First signal: pass SIGINT to the commands in the root (the demo tears its hosts down, as on a
  # terminal); a second one, or 90 s without an end, kills the namespaces (see cleanup).
  if [ -n "$interrupted" ] || [ -z "$upid" ]; then interrupted=1; exit 130; fi
  interrupted=1
  log "interrupted: SIGINT to the fresh root's commands (again to kill them outright)"
  kill -INT -- "-$upid" 2>/dev/null || true
}
trap on_signal INT TERM

# -- cgroups ---------------------------------------------------------------------------------------------
# One cgroup per host hierarchy, a child of this process's own; every command runs in it, inside a
# cgroup namespace, so what dockerd/runc create in the root lands under it and goes with it.
if [ "$(findmnt -n -o FSTYPE /sys/fs/cgroup)" = cgroup2 ]; then
  # A unified-only host: the namespace's root cgroup would hold processes, so dockerd could not enable
  # controllers below it; the root then sees the host's hierarchy as it is (no cgroup namespace).
  cg_mode=host cg_desc="the host's cgroup2 tree as it is"
else
  cg_mode=ns cg_desc="the host's hierarchies, rooted at a cgroup of the check's own"
  while read -r mp fstype opts; do
    if [ "$fstype" = cgroup2 ]; then
      path=$(awk -F: '$1 == 0 {print $3}' /proc/self/cgroup)
    else
      path=$(awk -F: -v o=",$opts," '$1 != 0 { n = split($2, c, ","); ok = n > 0
               for (i = 1; i <= n; i++) if (index(o, "," c[i] ",") == 0) ok = 0
               if (ok) {print $3; exit} }' /proc/self/cgroup)
    fi
    [ -n "$path" ] || { echo "check-fresh-debian: no cgroup of ours in $mp" >&2; exit 1; }
    d=${mp}${path%/}/$name
    mkdir "$d"
    cg_dirs+=("$d")
    for f in cpuset.cpus cpuset.mems; do [ -f "$d/$f" ] && cat "${d%/*}/$f" >"$d/$f"; done
    cg_specs+=("$fstype:$opts:${mp#/sys/fs/cgroup/}")
  done < <(awk '{ for (i = 7; $i != "-"; i++); if ($5 ~ "^/sys/fs/cgroup/" && ($(i+1) == "cgroup" || $(i+1) == "cgroup2")) print $5, $(i+1), $(i+3) }' /proc/self/mountinfo)
fi

# -- running things in the root --------------------------------------------------------------------------
# Environment of a root login shell on a machine behind this host's proxy (see the header).
root_env=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root USER=root LOGNAME=root
          SHELL=/bin/bash TERM=dumb)
passed_env=()
for v in http_proxy https_proxy ftp_proxy all_proxy no_proxy HTTP_PROXY HTTPS_PROXY FTP_PROXY ALL_PROXY NO_PROXY \
         SSL_CERT_FILE SSL_CERT_DIR REQUESTS_CA_BUNDLE CURL_CA_BUNDLE PIP_CERT PIP_INDEX_URL PIP_DEFAULT_TIMEOUT; do
  if [ -n "${!v:-}" ]; then root_env+=("$v=${!v}"); passed_env+=("$v"); fi
done

# Runs in the new namespaces as their first process (PID 1, which reaps orphans), on the host's
# filesystem: mounts the root's filesystems, pivots into it, runs the command in a root login shell.
# Output lines are prefixed with seconds since the start ("ts") or left as they are ("raw").
# shellcheck disable=SC2016
inner='
set -e
r=$1 mode=$2 cmd=$3 cgmode=$4 nenv=$5; shift 5
env=("${@:1:$nenv}"); shift "$nenv"
mount --bind "$r" "$r"
mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
mount -t sysfs -o nosuid,nodev,noexec sysfs "$r/sys"
if [ "$cgmode" = ns ]; then
  mount -t tmpfs -o nosuid,nodev,noexec,mode=755 cgroup "$r/sys/fs/cgroup"
  for spec; do
    IFS=: read -r fstype opts dir <<<"$spec"
    mkdir -p "$r/sys/fs/cgroup/$dir"
    mount -t "$fstype" -o "$opts" cgroup "$r/sys/fs/cgroup/$dir"
  done
else
  mount --rbind /sys/fs/cgroup "$r/sys/fs/cgroup"
fi
mount --bind /dev "$r/dev"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$r/dev/pts"
mount --bind "$r/dev/pts/ptmx" "$r/dev/ptmx"
mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$r/dev/shm"
mount -t tmpfs -o nosuid,nodev,mode=755 run "$r/run"
mkdir -p "$r/run/lock" "$r/run/pussh-testbed"
mount --bind /run/pussh-testbed "$r/run/pussh-testbed"
cd "$r"
mkdir -p .host
pivot_root . .host
umount -l /.host
rmdir /.host
cd /
rc=0
if [ "$mode" = raw ]; then
  /usr/bin/env -i "${env[@]}" /bin/bash -lc "$cmd" </dev/null || rc=$?
else
  printf -v t0 "%(%s)T" -1
  /usr/bin/env -i "${env[@]}" /bin/bash -lc "$cmd" </dev/null 2>&1 | {
    trap "" INT
    while IFS= read -r line; do printf -v now "%(%s)T" -1; printf "[+%4ds] %s\n" $((now - t0)) "$line"; done
  }
  rc=${PIPESTATUS[0]}
fi
exit "$rc"
'
# in_root ts|raw OUT CMD: CMD in a root login shell in the fresh root (cwd /), output to OUT; its status.
in_root() {
  local mode=$1 out=$2 cmd=$3 rc d
  mkdir -p /run/pussh-testbed
  set -m  # its own process group: a Ctrl-C reaches this script, which passes it on (on_signal)
  (
    for d in "${cg_dirs[@]}"; do echo "$BASHPID" >"$d/cgroup.procs"; done
    exec unshare --mount --uts --ipc --pid --cgroup --fork --kill-child --propagation private -- \
      /bin/bash -c "$inner" inner "$root" "$mode" "$cmd" "$cg_mode" "${#root_env[@]}" "${root_env[@]}" "${cg_specs[@]}"
  ) </dev/null >"$out" 2>&1 &
  upid=$!
  set +m
  local t_int=
  while :; do
    rc=0
    wait "$upid" || rc=$?
    kill -0 "$upid" 2>/dev/null || break  # ended (else: wait was cut short by a signal)
    if [ -n "$interrupted" ]; then
      [ -n "$t_int" ] || t_int=$SECONDS
      if [ $((SECONDS - t_int)) -gt 90 ]; then kill -KILL "$upid" 2>/dev/null || true; fi
      sleep 1
    fi
  done
  upid=
  [ -z "$interrupted" ] || exit 130
  return "$rc"
}
# after_cmd: processes left in our cgroups, and processes anywhere whose / is the fresh root (both 0 when
# the namespaces ended as they should).
root_id=$(stat -c %d:%i "$root")
leftovers() {
  local i n=0 m=0 p
  for ((i = 0; i < 50; i++)); do n=$(cg_pids | wc -l); [ "$n" = 0 ] && break; sleep 0.1; done
  for p in /proc/[0-9]*; do
    if [ "$(stat -L -c %d:%i "$p/root" 2>/dev/null)" = "$root_id" ]; then m=$((m + 1)); fi
  done
  echo "$n processes in the check's cgroups, $m with the fresh root as /"
}
# in_root_ok what OUT CMD: in_root ts, and on failure the log's tail to stderr and exit.
in_root_ok() {
  local what=$1; shift
  in_root ts "$@" || { local rc=$?; echo "check-fresh-debian: $what failed (exit $rc):" >&2; tail -40 "$1" >&2; exit 1; }
}

# -- the root filesystem ---------------------------------------------------------------------------------
log "debootstrap --variant=minbase bookworm $root $mirror"
# (in a mount namespace of its own: what it mounts in the target ends with it)
unshare --mount --propagation private -- \
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$w/debootstrap.log" 2>&1 \
  || { tail -20 "$w/debootstrap.log" >&2; exit 1; }

cp /etc/resolv.conf "$root/etc/resolv.conf"
# No service starts on package install (what policy-rc.d is for; deb-systemd-invoke honours it too).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
# The machine's release, as the host's debian.sources has it: bookworm, bookworm-updates, bookworm-security.
cat >"$root/etc/apt/sources.list" <<SRC
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SRC
rm -f "$root"/etc/apt/sources.list.d/*
# What a machine behind this host's proxy has: its trust store, pip's and apt's proxy settings.
passed_files=()
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  mkdir -p "$root/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  passed_files+=(/etc/ssl/certs/ca-certificates.crt)
fi
for f in /usr/local/share/ca-certificates/*.crt; do
  [ -f "$f" ] || continue
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp "$f" "$root/usr/local/share/ca-certificates/"
  passed_files+=("$f")
done
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf" && passed_files+=(/etc/pip.conf)
for f in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do
  [ -f "$f" ] && grep -qiE '^[^#/]*Acquire::[a-z]+::Proxy' "$f" && cp "$f" "$root$f" && passed_files+=("$f")
done
mkdir -p "$root/root/pussh"
git archive HEAD | tar -x -C "$root/root/pussh"

# A Debian 12 machine has python3 (minbase does not): install it from bookworm first, and apply
# bookworm-updates/-security, so "before" is an up-to-date Debian 12.
log "apt-get update; upgrade; install python3 (bookworm)"
in_root_ok "preparing the root" "$w/prepare.log" \
  'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -y -q upgrade &&
   DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3'

# name=version for every installed package; and every installed version that no bookworm suite carries
# (with the suites that do carry it), from `apt list --installed`.
snapshot() {
  in_root raw "$w/dpkg.out" "dpkg-query -W -f '\${db:Status-Abbrev} \${binary:Package}=\${Version}\n'"
  awk '$1 ~ /^.i/ {print $2}' "$w/dpkg.out" | sort
}
foreign() {
  # apt list names archives by suite (oldstable, stable, ...): map them to codenames from the Release files.
  local f
  for f in "$root"/var/lib/apt/lists/*_InRelease; do
    awk '/^Suite:/ {s = $2} /^Codename:/ {c = $2} END {print s, c}' "$f"
  done >"$w/suites.txt"
  in_root raw "$w/apt-list.out" 'apt list --installed 2>/dev/null'
  awk -F'[/ ]' -v map="$w/suites.txt" '
    BEGIN { while ((getline line < map) > 0) { split(line, p, " "); code[p[1]] = p[2] } }
    /\[installed/ {
      n = split($2, s, ","); ok = 0; from = ""
      for (i = 1; i <= n; i++) {
        if (s[i] == "now") continue
        c = (s[i] in code) ? code[s[i]] : s[i]
        if (c ~ /^bookworm/) ok = 1
        from = from (from ? "," : "") c
      }
      if (!ok) printf "%s=%s (%s)\n", $1, $3, from ? from : "no archive" }' "$w/apt-list.out"
}
pyversion() { in_root raw "$w/py.out" 'python3 --version 2>&1' || true; head -1 "$w/py.out"; }

py_before=$(pyversion)
snapshot >"$w/before.txt"
foreign >"$w/foreign-before.txt"

# The README's commands, as a new user types them: in /root/pussh, in a root shell.
cmds=(./scripts/demo.sh)
[ "$with_tests" = 1 ] && cmds+=(./scripts/test.sh)
declare -A rcs secs left veth
for c in "${cmds[@]}"; do
  log "fresh root, cd /root/pussh: $c"
  t0=$SECONDS
  rc=0
  in_root ts "$w/${c##*/}.log" "cd /root/pussh && $c" || rc=$?
  rcs[$c]=$rc secs[$c]=$((SECONDS - t0))
  left[$c]=$(leftovers)
  # the demo's server: its veth pair (host side ptb<N>l) goes with its network namespace
  n=$(sed -n "s/.*server 'pussh-tb\([0-9]*\)'.*/\1/p" "$w/${c##*/}.log" | head -1)
  if [ -n "$n" ]; then
    veth[$c]="its server's veth ptb${n}l on the host: $(ip link show "ptb${n}l" >/dev/null 2>&1 && echo 'still there' || echo gone)"
  fi
  log "$c: exit $rc in ${secs[$c]}s; left running: ${left[$c]}"
  [ "$rc" = 0 ] || tail -40 "$w/${c##*/}.log" >&2
done

py_after=$(pyversion)
snapshot >"$w/after.txt"
foreign >"$w/foreign.txt"
# Packages present before whose version changed.
join -t= -j1 <(sort -t= -k1,1 "$w/before.txt") <(sort -t= -k1,1 "$w/after.txt") \
  | awk -F= '$2 != $3 {print $1 ": " $2 " -> " $3}' >"$w/changed.txt"

log "fresh root: bash scripts/install-system.sh (again: the fast path)"
t0=$(date +%s.%N)
rc2=0
in_root raw "$w/again.log" 'cd /root/pussh && bash scripts/install-system.sh' || rc2=$?
t1=$(date +%s.%N)

# seconds into a command's log at which its first line matching a pattern was written
at() { awk -v re="$2" '$0 ~ re { sub(/^\[\+ */, ""); sub(/s\].*/, ""); print; exit }' "$1"; }

echo "# Fresh Debian 12 check of the README's commands (scripts/check-fresh-debian.sh)"
echo "date:      $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "git HEAD:  $head"
echo "rootfs:    debootstrap --variant=minbase bookworm $mirror; apt sources bookworm, bookworm-updates, bookworm-security"
echo "prepared:  apt-get upgrade; apt-get install --no-install-recommends python3 (minbase has no python3; a Debian 12 machine does)"
echo "proxy:     from the host: ${passed_files[*]:-(no files)}; env ${passed_env[*]:-(none)}"
echo "machine:   own mount/PID/UTS/IPC/cgroup namespaces, pivot_root into the root; /proc, /sys, /dev (+ new devpts,"
echo "           /dev/shm), tmpfs /run; cgroups: $cg_desc;"
echo "           the host's network; no init (policy-rc.d: no service starts on install)"
echo "ran:       /root/pussh = git archive HEAD; cd /root/pussh in a root login shell (bash -l, no sudo), then:"
for c in ./scripts/demo.sh ./scripts/test.sh; do
  if [ -n "${rcs[$c]+x}" ]; then
    extra=
    if [ "$c" = ./scripts/demo.sh ] && s=$(at "$w/demo.sh.log" '==> ') && [ -n "$s" ]; then
      extra=" (its first step at +${s}s, after setup.sh and starting the two hosts)"
    fi
    printf '             %-18s -> exit %s in %ss%s\n' "$c" "${rcs[$c]}" "${secs[$c]}" "$extra"
    printf '             %-18s    left running after it: %s\n' "" "${left[$c]}"
    [ -z "${veth[$c]:-}" ] || printf '             %-18s    %s\n' "" "${veth[$c]}"
  else
    printf '             %-18s -> not run (scripts/check-fresh-debian.sh --with-tests runs it)\n' "$c"
  fi
done
echo
echo "                           before               after"
printf '%-26s %-20s %s\n' "python3 --version" "$py_before" "$py_after"
printf '%-26s %-20s %s\n' "installed packages" "$(wc -l <"$w/before.txt")" "$(wc -l <"$w/after.txt")"
printf '%-26s %-20s %s\n' "versions changed" "-" "$(wc -l <"$w/changed.txt")"
printf '%-26s %-20s %s\n' "not from bookworm*" "$(wc -l <"$w/foreign-before.txt")" "$(wc -l <"$w/foreign.txt")"
printf '%-26s %-20s %s\n' "from trixie" "$(grep -c '(trixie' "$w/foreign-before.txt" || true)" "$(grep -c '(trixie' "$w/foreign.txt" || true)"
echo
echo "Installed packages whose version is not from bookworm, bookworm-updates or bookworm-security:"
if [ -s "$w/foreign.txt" ]; then sed 's/^/  /' "$w/foreign.txt"; else echo "  (none)"; fi
echo
echo "Packages installed before whose version changed:"
if [ -s "$w/changed.txt" ]; then sed 's/^/  /' "$w/changed.txt"; else echo "  (none)"; fi
echo
echo "apt configuration the setup added:"
for f in "$root"/etc/apt/sources.list.d/* "$root"/etc/apt/preferences.d/*; do
  [ -f "$f" ] && printf '  %s: %s\n' "${f#"$root"}" "$(grep -v '^#' "$f" | grep . | paste -sd ';' | sed 's/;/; /g')"
done
echo
echo "Installed tools:"
for c in "dockerd --version" "containerd --version" "runc --version" "docker --version" "docker buildx version" \
         "skopeo --version" "ssh -V" "/root/pussh/.venv/bin/pussh --version"; do
  in_root raw "$w/tool.out" "$c 2>&1" || true
  printf '  %-22s %s\n' "${c##*/}:" "$(head -1 "$w/tool.out")"
done
echo
printf 'Second run of scripts/install-system.sh (fast path): exit %s in %.1fs, output: %s\n' "$rc2" \
  "$(awk "BEGIN{print $t1 - $t0}")" "$([ -s "$w/again.log" ] && head -c 200 "$w/again.log" || echo '(none)')"
for c in "${cmds[@]}"; do
  l="$w/${c##*/}.log"
  echo
  if [ "$c" = ./scripts/demo.sh ]; then
    echo "Output of $c from its first step on ([+s] = seconds since it started; the setup before it: apt and pip):"
    awk '/==> /{on = 1} on' "$l" | sed 's/^/  /'
  else
    echo "Output of $c, its last 60 lines ([+s] = seconds since it started):"
    tail -60 "$l" | sed 's/^/  /'
  fi
done
ok=1
for c in "${cmds[@]}"; do [ "${rcs[$c]}" = 0 ] || ok=0; done
[ "$ok" = 1 ] && [ "$rc2" = 0 ]
