#!/usr/bin/env bash
# make test-fresh: runs `make test` (CI=true) in a bare Debian 12 root, the
# check a new contributor's machine or a fresh CI runner makes. The root has
# only what debootstrap --variant=minbase --include=git,make,ca-certificates
# gives, plus this machine's Go toolchain (/usr/local/go), CA bundle and
# resolv.conf (so package and module downloads are trusted as on the host).
# Everything else must be installed by `make test` itself (scripts/deps.sh).
# It downloads (debootstrap, apt, Go modules), so it is not part of make test.
# The bare root is cached as a tarball in $BOOTCERT_PKG_CACHE (default
# dist/cache); each run unpacks a new copy. KEEP=1 keeps the root.
set -euo pipefail
cd "$(dirname "$0")/.."
suite=bookworm
arch=$(dpkg --print-architecture)
cache=${BOOTCERT_PKG_CACHE:-dist/cache}
tarball=$cache/debian12-minbase-git-make-$arch.tar.gz
work=$(mktemp -d /tmp/bootcert-test-fresh.XXXXXX)
R=$work/root
mounts=()
t0=$(date +%s)

cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "test-fresh: kept $R"; else rm -rf --one-file-system "$work"; fi
}
trap cleanup EXIT
fail() { echo "test-fresh: FAIL: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap, chroot, mount)"
command -v debootstrap >/dev/null || fail "debootstrap not found (run make deps)"
goroot=$(go env GOROOT 2>/dev/null || echo /usr/local/go)
[ -x "$goroot/bin/go" ] || fail "no Go toolchain at $goroot"

if [ ! -s "$tarball" ]; then
  url=$(scripts/debian-mirror.sh "$suite")
  [ -n "$url" ] || fail "no '$suite' deb source in /etc/apt/sources.list*; set MIRROR"
  echo "test-fresh: debootstrap $suite (minbase + git,make,ca-certificates); cached in $tarball"
  mkdir -p "$cache"
  debootstrap --variant=minbase --include=git,make,ca-certificates "$suite" "$work/base" "$url" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap $suite"; }
  rm -rf "$work/base/var/cache/apt/archives/"*.deb
  tar -C "$work/base" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
  rm -rf "$work/base"
fi
mkdir -p "$R"
tar -C "$R" -xzf "$tarball"

# The toolchain, the trust store and DNS as on the host; the apt sources the
# root was made with stay (debootstrap wrote them from the same mirror).
mkdir -p "$R/usr/local"
cp -a "$goroot" "$R/usr/local/go"
cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"
cp -L /etc/resolv.conf "$R/etc/resolv.conf"
# debootstrap writes no /etc/hosts; every installed Debian (installer, cloud
# images) has one, and tests name the loopback "localhost" (Go's resolver
# reads /etc/hosts, and without it asks DNS, which does not know localhost).
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"

# The working tree (tracked and untracked, not ignored), as CI's clone would see it.
mkdir -p "$R/src/bootcert"
git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} sh -c '[ -e "{}" ] && printf "%s\0" "{}"' |
  tar --null -T - -cf - | tar -C "$R/src/bootcert" -xf -

for m in proc sys dev dev/pts; do
  mkdir -p "$R/$m"
  case $m in
    proc) mount -t proc proc "$R/proc" ;;
    sys) mount --rbind /sys "$R/sys" ;;
    dev) mount --rbind /dev "$R/dev" ;;
    dev/pts) continue ;;
  esac
  mounts+=("$R/$m")
done
mount -t tmpfs tmpfs "$R/tmp" && mounts+=("$R/tmp")

goenv=(GOPROXY="$(go env GOPROXY)" GOSUMDB="$(go env GOSUMDB)" GONOSUMDB="$(go env GONOSUMDB)" GOFLAGS="$(go env GOFLAGS)")
echo "test-fresh: make test in the bare root ($R)"
status=0
chroot "$R" /usr/bin/env -i HOME=/root PATH=/usr/local/go/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  LANG=C.UTF-8 CI=true "${goenv[@]}" \
  bash -c 'cd /src/bootcert && make test' || status=$?
echo "test-fresh: make test exited $status after $(( $(date +%s) - t0 )) s"
exit $status
