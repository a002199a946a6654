#!/usr/bin/env bash
# Prints the path of a Debian 11 (bullseye) C sysroot for ARCH (amd64, arm64,
# armhf), making it first if it is not cached: bullseye's libc6, libc6-dev
# and linux-libc-dev of that architecture, downloaded from the mirror in this
# machine's apt sources (scripts/debian-mirror.sh; a bookworm source's mirror
# serves bullseye too), verified (InRelease with gpgv against
# debian-archive-keyring, Packages.xz and each .deb by SHA256) and extracted
# with dpkg-deb -x. make packages builds with gcc --sysroot=<this>, so the
# binaries need no newer glibc than Debian 11's 2.31 (RHEL 8 has 2.28: the
# symbols the binaries use are older still; the packages declare the floor).
#   scripts/sysroot.sh ARCH     (cache: $BOOTCERT_SYSROOT_CACHE, default dist/cache)
# <sysroot>/.pkgs lists "package version" of what it holds; .files/<package>
# the files of each (build.sh maps a binary's libraries to packages with it).
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:?usage: scripts/sysroot.sh amd64|arm64|armhf}
case $arch in amd64|arm64|armhf) ;; *) echo "sysroot.sh: unsupported architecture '$arch'" >&2; exit 1 ;; esac
suite=bullseye
pkgs=(libc6 libc6-dev linux-libc-dev)
cache=${BOOTCERT_SYSROOT_CACHE:-dist/cache}
root=$(realpath -m "$cache/sysroot-$suite-$arch")
if [ -s "$root/.pkgs" ]; then echo "$root"; exit 0; fi

url=$(scripts/debian-mirror.sh "$suite")
[ -n "$url" ] || url=$(scripts/debian-mirror.sh bookworm)
[ -n "$url" ] || { echo "sysroot.sh: no Debian mirror in /etc/apt/sources.list*; set MIRROR" >&2; exit 1; }
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -s "$keyring" ] || { echo "sysroot.sh: $keyring missing (apt-get install debian-archive-keyring)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
get() { curl -fsSL --retry 3 -o "$2" "$1" || { echo "sysroot.sh: downloading $1 failed" >&2; exit 1; }; }

get "$url/dists/$suite/InRelease" "$work/InRelease"
gpgv --keyring "$keyring" --output "$work/Release" "$work/InRelease" 2>"$work/gpgv.log" ||
  { cat "$work/gpgv.log" >&2; echo "sysroot.sh: $suite InRelease: bad signature" >&2; exit 1; }
index=main/binary-$arch/Packages.xz
sum=$(awk -v f="$index" '/^SHA256:/ { s = 1; next } /^[^ ]/ { s = 0 } s && $3 == f { print $1 }' "$work/Release")
[ -n "$sum" ] || { echo "sysroot.sh: $index not in $suite's Release" >&2; exit 1; }
get "$url/dists/$suite/$index" "$work/Packages.xz"
echo "$sum  $work/Packages.xz" | sha256sum -c --quiet - || { echo "sysroot.sh: $index: SHA256 mismatch" >&2; exit 1; }
xz -d "$work/Packages.xz"

mkdir -p "$root.tmp/.files"
: >"$root.tmp/.pkgs"
for p in "${pkgs[@]}"; do
  read -r file sha ver < <(awk -v p="$p" '
    /^Package: / { pkg = $2 } /^Version: / { v = $2 } /^Filename: / { f = $2 } /^SHA256: / { s = $2 }
    /^$/ { if (pkg == p) { print f, s, v; exit } pkg = "" }' "$work/Packages")
  [ -n "${file:-}" ] || { echo "sysroot.sh: $p not in $suite/$arch" >&2; exit 1; }
  get "$url/$file" "$work/$p.deb"
  echo "$sha  $work/$p.deb" | sha256sum -c --quiet - || { echo "sysroot.sh: $file: SHA256 mismatch" >&2; exit 1; }
  dpkg-deb -x "$work/$p.deb" "$root.tmp"
  dpkg-deb -c "$work/$p.deb" | awk '{ print substr($6, 2) }' >"$root.tmp/.files/$p"
  echo "$p $ver" >>"$root.tmp/.pkgs"
done
# libc6-dev's symlinks are absolute (libpthread.so -> /lib/<triplet>/...):
# made relative so that they resolve inside the sysroot (the linker scripts'
# absolute paths are prefixed by ld itself: they lie inside --sysroot)
find "$root.tmp" -type l -lname '/*' | while read -r l; do
  ln -sfr "$root.tmp$(readlink "$l")" "$l"
done
rm -rf "$root"
mv "$root.tmp" "$root"
echo "$root"
