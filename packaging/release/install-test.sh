#!/usr/bin/env bash
# Install test of the bootcert packages (make test-packages). Downloads a
# minimal Debian 12 once (debootstrap --variant=minbase plus systemd and procps, from
# the mirror in this machine's apt sources; cached as a tarball
# in $BOOTCERT_PKG_CACHE, default dist/cache), then, each in a fresh copy:
#   1. deb, no systemd running (chroot): install, user/group/modes/conffiles,
#      systemd-analyze verify, check-config as the bootcert user; upgrade to
#      a higher version (edited config and state survive); a conffile changed
#      on both sides (unattended dpkg stops, --force-confold keeps the edit);
#      remove (state and config kept); purge (state kept); reinstall.
#   2. deb, systemd booted (systemd-nspawn -b): install, the unit is known but
#      neither enabled nor started, a start fails in ExecStartPre with the
#      missing-file message (the sandboxed unit reads its config); enabled,
#      upgraded (still enabled), removed (stopped, disabled, state kept).
#   3. rpm --root into the Debian root (scriptlets run): install, upgrade
#      (edited %config(noreplace) kept), erase (.rpmsave, state kept).
# The account tool's package (bootcert-admin, nfpm-admin.yaml) is installed
# beside the gateway's in 1 (deb) and 3 (rpm), run (--version, --help) and
# removed on its own.
# Needs root, debootstrap, systemd-container, rpm (make deps).
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${BOOTCERT_PKG_CACHE:-dist/cache}
suite=bookworm
arch=$(dpkg --print-architecture)
t0=$(date +%s)
work=$(mktemp -d /tmp/bootcert-install-test.XXXXXX)
mounts=() boot_pid=""
passed=0

cleanup() {
  if [ -n "$boot_pid" ]; then
    kill -TERM "$boot_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$boot_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$boot_pid" 2>/dev/null || true
  fi
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

fail() { echo "install-test: FAIL: $*" >&2; exit 1; }
ok() { echo "install-test: ok: $*"; passed=$((passed + 1)); }
step() { echo "install-test: --- $*"; }

[ "$(id -u)" -eq 0 ] || fail "needs root (chroot, systemd-nspawn, mount)"
for p in debootstrap systemd-nspawn rpm dpkg-deb; do
  command -v $p >/dev/null || fail "$p not found (run make deps)"
done

url=$(scripts/debian-mirror.sh "$suite")
[ -n "$url" ] || fail "no '$suite' deb source in /etc/apt/sources.list*; set MIRROR"

# --- packages: two builds, the second with a higher version
step "building packages"
for v in 0.1.0 0.2.0; do
  make -s --no-print-directory packages DIST="$work/pkgs" VERSION=$v ARCHES="$arch" >/dev/null
done
debA=$work/pkgs/bootcert_0.1.0_$arch.deb debB=$work/pkgs/bootcert_0.2.0_$arch.deb
rpmarch=$(case $arch in amd64) echo x86_64 ;; arm64) echo aarch64 ;; esac)
rpmA=$work/pkgs/bootcert-0.1.0-1.$rpmarch.rpm rpmB=$work/pkgs/bootcert-0.2.0-1.$rpmarch.rpm
adminDeb=$work/pkgs/bootcert-admin_0.1.0_$arch.deb adminRpm=$work/pkgs/bootcert-admin-0.1.0-1.$rpmarch.rpm
[ -s "$adminDeb" ] && [ -s "$adminRpm" ] || fail "make packages did not build the bootcert-admin packages"

# --- Debian 12 root, cached
include=systemd,procps # procps: /bin/kill, the unit's ExecReload
tarball=$cache/debian12-minbase-${include//,/-}-$arch.tar.gz
if [ ! -s "$tarball" ]; then
  step "debootstrap $suite (minbase + $include); cached in $tarball"
  mkdir -p "$cache"
  debootstrap --variant=minbase --include="$include" "$suite" "$work/base" "$url" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap $suite"; }
  rm -rf "$work/base/var/cache/apt/archives/"*.deb
  tar -C "$work/base" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
  rm -rf "$work/base"
fi
newroot() {
  mkdir -p "$1"
  tar -C "$1" -xzf "$tarball"
}
# chroot with /proc (systemd-tmpfiles needs it)
withproc() { mount -t proc proc "$1/proc"; mounts+=("$1/proc"); }
in_root() { local r=$1; shift; chroot "$r" "$@"; }
mode() { in_root "$1" stat -c '%a %U:%G' "$2"; }
expect_mode() { # root path want
  local got
  got=$(mode "$1" "$2") || fail "$2 missing"
  [ "$got" = "$3" ] || fail "$2 is $got, want $3"
}
config_is_edited() { grep -q '^endpoint = "gw-test-ats.iot.eu-west-1.amazonaws.com"$' "$1/etc/bootcert/bootcertd.toml"; }

# --- 1. deb in a chroot
step "deb: install, upgrade, remove, purge (chroot, systemd not running)"
R=$work/deb
newroot "$R"
withproc "$R"
cp "$debA" "$debB" "$R/var/tmp/"
in_root "$R" dpkg -i "/var/tmp/$(basename "$debA")" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i $(basename "$debA")"; }
ok "dpkg -i $(basename "$debA") in Debian 12 minbase"
uid=$(in_root "$R" id -u bootcert) || fail "no user bootcert"
in_root "$R" getent group bootcert >/dev/null || fail "no group bootcert"
in_root "$R" getent group tss | grep -Eq '[:,]bootcert(,|$)' || fail "bootcert is not in group tss"
ok "user bootcert (uid $uid), group bootcert, member of tss"
expect_mode "$R" /usr/bin/bootcertd "755 root:root"
expect_mode "$R" /usr/bin/bootcertctl "755 root:root"
expect_mode "$R" /etc/bootcert "750 root:bootcert"
expect_mode "$R" /etc/bootcert/bootcertd.toml "644 root:root"
expect_mode "$R" /var/lib/bootcert "700 bootcert:bootcert"
expect_mode "$R" /var/lib/bootcert/keys "700 bootcert:bootcert"
expect_mode "$R" /usr/lib/systemd/system/bootcertd.service "644 root:root"
ok "files and modes (/etc/bootcert 0750 root:bootcert, /var/lib/bootcert{,/keys} 0700 bootcert)"
in_root "$R" dpkg-query -W -f='${Conffiles}\n' bootcert | grep -q '^ /etc/bootcert/bootcertd.toml [0-9a-f]\{32\}$' ||
  fail "bootcertd.toml is not a conffile"
ok "conffile /etc/bootcert/bootcertd.toml"
if out=$(in_root "$R" systemd-analyze verify /usr/lib/systemd/system/bootcertd.service 2>&1) && [ -z "$out" ]; then
  ok "systemd-analyze verify bootcertd.service inside the root: no warnings"
else
  fail "systemd-analyze verify: $out"
fi
out=$(in_root "$R" runuser -u bootcert -- bootcertd --check-config /etc/bootcert/bootcertd.toml 2>&1) && fail "check-config passed on the example config: $out"
grep -q 'AmazonRootCA1.pem: no such file' <<<"$out" || fail "check-config as bootcert: $out"
ok "bootcertd --check-config as user bootcert reads the config, names the missing root CA"
[ -d "$R/run/systemd/system" ] && fail "/run/systemd/system in the chroot"
in_root "$R" systemctl is-enabled bootcertd.service >/dev/null 2>&1 && fail "bootcertd enabled on install"
ok "not enabled on install"

# the account tool's package: its own, installed and removed beside the gateway's
cp "$adminDeb" "$R/var/tmp/"
in_root "$R" dpkg -i "/var/tmp/$(basename "$adminDeb")" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i $(basename "$adminDeb")"; }
expect_mode "$R" /usr/bin/bootcert-admin "755 root:root"
[ -f "$R/usr/share/doc/bootcert-admin/cloud.md" ] || fail "bootcert-admin: docs/cloud.md not installed"
out=$(in_root "$R" bootcert-admin --version 2>&1) || fail "bootcert-admin --version: $out"
[ "$out" = "bootcert-admin 0.1.0" ] || fail "bootcert-admin --version printed: $out"
out=$(in_root "$R" bootcert-admin --help 2>&1) || fail "bootcert-admin --help: $out"
grep -q 'cloud' <<<"$out" || fail "bootcert-admin --help does not list the cloud commands: $out"
in_root "$R" dpkg -r bootcert-admin >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -r bootcert-admin"; }
[ -e "$R/usr/bin/bootcert-admin" ] && fail "bootcert-admin still there after remove"
[ -e "$R/usr/bin/bootcertd" ] || fail "removing bootcert-admin removed bootcertd"
ok "bootcert-admin .deb: installs beside bootcert, runs (--version 0.1.0, --help), removes alone"

sed -i 's/^endpoint = .*/endpoint = "gw-test-ats.iot.eu-west-1.amazonaws.com"/' "$R/etc/bootcert/bootcertd.toml"
echo "generation 1" >"$R/var/lib/bootcert/keys/op-1.tpmkey"
in_root "$R" chown bootcert:bootcert /var/lib/bootcert/keys/op-1.tpmkey
in_root "$R" dpkg -i "/var/tmp/$(basename "$debB")" >"$work/dpkg.log" 2>&1 </dev/null || { cat "$work/dpkg.log" >&2; fail "upgrade to $(basename "$debB")"; }
[ "$(in_root "$R" dpkg-query -W -f='${Version}' bootcert)" = 0.2.0-1 ] || fail "version after upgrade"
config_is_edited "$R" || fail "edited config lost on upgrade"
[ -e "$R/etc/bootcert/bootcertd.toml.dpkg-dist" ] && fail "upgrade left bootcertd.toml.dpkg-dist"
[ -s "$R/var/lib/bootcert/keys/op-1.tpmkey" ] || fail "state lost on upgrade"
[ "$(in_root "$R" id -u bootcert)" = "$uid" ] || fail "bootcert uid changed on upgrade"
expect_mode "$R" /etc/bootcert "750 root:bootcert"
ok "upgrade 0.1.0 -> 0.2.0: edited config, state, uid and modes kept"

# 0.3.0: 0.2.0 repacked with a changed shipped default, so that both sides
# changed the conffile: unattended, dpkg cannot ask; --force-confold keeps
# the edited one (the documented way) and leaves the new default beside it.
C=$work/pkgs/c
dpkg-deb -R "$debB" "$C"
echo '# a changed default' >>"$C/etc/bootcert/bootcertd.toml"
sed -i 's/^Version: .*/Version: 0.3.0-1/' "$C/DEBIAN/control"
(cd "$C" && find etc usr -type f -exec md5sum {} + >DEBIAN/md5sums)
dpkg-deb -b --root-owner-group "$C" "$R/var/tmp/bootcert_0.3.0_$arch.deb" >/dev/null
if in_root "$R" dpkg -i "/var/tmp/bootcert_0.3.0_$arch.deb" >"$work/dpkg.log" 2>&1 </dev/null; then
  fail "dpkg -i without a terminal passed although both sides changed the conffile"
fi
grep -q 'conffile prompt' "$work/dpkg.log" || { cat "$work/dpkg.log" >&2; fail "unexpected dpkg failure on the conffile conflict"; }
in_root "$R" dpkg --force-confold --configure bootcert >"$work/dpkg.log" 2>&1 </dev/null || { cat "$work/dpkg.log" >&2; fail "dpkg --force-confold --configure"; }
config_is_edited "$R" || fail "--force-confold replaced the edited config"
grep -q '^# a changed default$' "$R/etc/bootcert/bootcertd.toml.dpkg-dist" || fail "new default not left as bootcertd.toml.dpkg-dist"
[ "$(in_root "$R" dpkg-query -W -f='${Status} ${Version}' bootcert)" = "install ok installed 0.3.0-1" ] || fail "0.3.0 not configured"
ok "conffile changed on both sides: unattended dpkg stops at the prompt; --force-confold keeps the edit, new default in .dpkg-dist"

in_root "$R" dpkg -r bootcert >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -r"; }
[ -e "$R/usr/bin/bootcertd" ] && fail "bootcertd still there after remove"
[ -s "$R/var/lib/bootcert/keys/op-1.tpmkey" ] || fail "state deleted on remove"
config_is_edited "$R" || fail "config deleted on remove"
in_root "$R" id -u bootcert >/dev/null || fail "user deleted on remove"
ok "dpkg -r: binaries gone; state, config and user kept"
in_root "$R" dpkg -P bootcert >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -P"; }
[ -e "$R/etc/bootcert/bootcertd.toml" ] && fail "conffile kept after purge"
[ -s "$R/var/lib/bootcert/keys/op-1.tpmkey" ] || fail "state deleted on purge"
grep -q 'kept /var/lib/bootcert' "$work/dpkg.log" || fail "purge did not say what it kept"
ok "dpkg -P: conffile gone, /var/lib/bootcert kept (and said so)"
in_root "$R" dpkg -i "/var/tmp/$(basename "$debA")" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "reinstall"; }
[ "$(in_root "$R" id -u bootcert)" = "$uid" ] && [ -s "$R/var/lib/bootcert/keys/op-1.tpmkey" ] || fail "reinstall: uid or state"
ok "reinstall after purge: same uid, state intact"

# --- 2. deb with systemd running
step "deb: systemd booted in systemd-nspawn"
B=$work/boot
newroot "$B"
cp "$debA" "$debB" "$B/var/tmp/"  # the booted container mounts a tmpfs on /tmp
systemd-nspawn -q --register=no --keep-unit --console=passive -D "$B" -b >"$work/nspawn.log" 2>&1 &
boot_pid=$!
leader=""
for _ in $(seq 100); do
  leader=$(pgrep -P "$boot_pid" -x systemd || true)
  [ -n "$leader" ] && break
  sleep 0.1
done
[ -n "$leader" ] || { cat "$work/nspawn.log" >&2; fail "systemd did not start in the container"; }
N() { nsenter -t "$leader" -a "$@"; }
for _ in $(seq 300); do
  st=$(N systemctl is-system-running 2>/dev/null || true)
  case $st in running|degraded) break ;; esac
  sleep 0.2
done
N test -d /run/systemd/system || fail "systemd not running in the container"
N dpkg -i "/var/tmp/$(basename "$debA")" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i (booted)"; }
grep -q "systemctl enable --now bootcertd" "$work/dpkg.log" || fail "postinst did not print the next steps"
N systemctl cat bootcertd.service >/dev/null 2>&1 || fail "unit unknown after install (daemon-reload)"
st=$(N systemctl is-enabled bootcertd.service 2>&1 || true)
[ "$st" = disabled ] || fail "is-enabled after install: $st"
N systemctl is-active -q bootcertd.service && fail "bootcertd running after install"
ok "booted: unit loaded, disabled, inactive; postinst printed the next steps"
N systemctl start bootcertd.service >/dev/null 2>&1 && fail "bootcertd started on the example config"
N systemctl stop bootcertd.service 2>/dev/null || true
N journalctl -u bootcertd.service --no-pager 2>/dev/null | grep -q 'problem="reading CA file /etc/bootcert/AmazonRootCA1.pem: open /etc/bootcert/AmazonRootCA1.pem: no such file' ||
  { N journalctl -u bootcertd.service --no-pager >&2; fail "ExecStartPre did not name the missing root CA"; }
ok "start on the example config fails in ExecStartPre (sandboxed, as bootcert) naming the missing root CA"
N systemctl enable bootcertd.service >/dev/null 2>&1
N dpkg -i "/var/tmp/$(basename "$debB")" >"$work/dpkg.log" 2>&1 </dev/null || { cat "$work/dpkg.log" >&2; fail "upgrade (booted)"; }
[ "$(N systemctl is-enabled bootcertd.service)" = enabled ] || fail "upgrade disabled the unit"
ok "booted upgrade keeps the unit enabled"
N dpkg -r bootcert >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -r (booted)"; }
[ -L "$B/etc/systemd/system/multi-user.target.wants/bootcertd.service" ] && fail "enable symlink left after remove"
N systemctl cat bootcertd.service >/dev/null 2>&1 && fail "unit still known after remove"
[ -d "$B/var/lib/bootcert/keys" ] || fail "state deleted on remove (booted)"
ok "booted remove: stopped, disabled, unit gone after daemon-reload, state kept"
kill -TERM "$boot_pid"
wait "$boot_pid" 2>/dev/null || true
boot_pid=""

# --- 3. rpm into the Debian root (scriptlets run chrooted there)
step "rpm --root: install, upgrade, erase"
P=$work/rpm
newroot "$P"
withproc "$P"
rpmq() { rpm --root "$P" "$@" 2>&1 | grep -v -e 'use Alien' -e 'assuming you know what you are doing'; }
rpm --root "$P" --initdb
rpmq -i --nodeps "$rpmA" >"$work/rpm.log" || true
rpmq -q bootcert >/dev/null || { cat "$work/rpm.log" >&2; fail "rpm -i"; }
grep -q 'scriptlet failed' "$work/rpm.log" && { cat "$work/rpm.log" >&2; fail "rpm -i: scriptlet failed"; }
in_root "$P" id -u bootcert >/dev/null || fail "rpm: no user bootcert"
expect_mode "$P" /etc/bootcert "750 root:bootcert"
expect_mode "$P" /var/lib/bootcert/keys "700 bootcert:bootcert"
expect_mode "$P" /usr/bin/bootcertd "755 root:root"
ok "rpm -i: scriptlets ran (user, tmpfiles), modes"
rpmq -i --nodeps "$adminRpm" >"$work/rpm.log" || true
rpmq -q bootcert-admin >/dev/null || { cat "$work/rpm.log" >&2; fail "rpm -i bootcert-admin"; }
expect_mode "$P" /usr/bin/bootcert-admin "755 root:root"
out=$(in_root "$P" bootcert-admin --version 2>&1) || fail "rpm: bootcert-admin --version: $out"
[ "$out" = "bootcert-admin 0.1.0" ] || fail "rpm: bootcert-admin --version printed: $out"
rpmq -e bootcert-admin >"$work/rpm.log" || true
[ -e "$P/usr/bin/bootcert-admin" ] && fail "rpm -e bootcert-admin left the binary"
ok "bootcert-admin .rpm: installs, runs (--version 0.1.0), erases"
sed -i 's/^endpoint = .*/endpoint = "gw-test-ats.iot.eu-west-1.amazonaws.com"/' "$P/etc/bootcert/bootcertd.toml"
echo "generation 1" >"$P/var/lib/bootcert/keys/op-1.tpmkey"
rpmq -U --nodeps "$rpmB" >"$work/rpm.log" || true
[ "$(rpm --root "$P" -q --qf '%{VERSION}' bootcert 2>/dev/null)" = 0.2.0 ] || { cat "$work/rpm.log" >&2; fail "rpm -U"; }
grep -q 'scriptlet failed' "$work/rpm.log" && { cat "$work/rpm.log" >&2; fail "rpm -U: scriptlet failed"; }
config_is_edited "$P" || fail "rpm -U replaced the edited config"
[ -s "$P/var/lib/bootcert/keys/op-1.tpmkey" ] || fail "rpm -U lost state"
expect_mode "$P" /etc/bootcert "750 root:bootcert"
ok "rpm -U 0.1.0 -> 0.2.0: edited config and state kept"
rpmq -e bootcert >"$work/rpm.log" || true
rpm --root "$P" -q bootcert >/dev/null 2>&1 && { cat "$work/rpm.log" >&2; fail "rpm -e"; }
[ -e "$P/usr/bin/bootcertd" ] && fail "rpm -e left bootcertd"
[ -s "$P/var/lib/bootcert/keys/op-1.tpmkey" ] || fail "rpm -e deleted state"
[ -f "$P/etc/bootcert/bootcertd.toml.rpmsave" ] || fail "rpm -e: edited config not saved as .rpmsave"
ok "rpm -e: state kept, edited config saved as bootcertd.toml.rpmsave"

echo "install-test: $passed passed, 0 failed ($(($(date +%s) - t0)) s)"
