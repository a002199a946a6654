#!/usr/bin/env bash
# Builds two packages an architecture:
#   <OUTDIR>/bootcert_<version>_<arch>.deb, bootcert-<version>-1.<rpmarch>.rpm
#     the gateway (bootcertd, bootcertctl), from nfpm.yaml;
#   <OUTDIR>/bootcert-admin_<version>_<arch>.deb, bootcert-admin-<version>-1.<rpmarch>.rpm
#     the account tool (bootcert-admin, which links the AWS SDK), from
#     nfpm-admin.yaml.
# Run it as `make packages [DIST=dir] [VERSION=x.y.z] [ARCHES=amd64]`: the
# Makefile passes its release build flags (RELEASE_CGO, RELEASE_FLAGS,
# RELEASE_GCFLAGS, RELEASE_LDFLAGS: stripped, -trimpath, tag nosimulator).
#   packaging/release/build.sh OUTDIR
# Environment:
#   VERSION  package version (default: from git describe, see below)
#   ARCHES   architectures to build, Debian's names (default: "amd64 arm64 armhf")
#   GO       go command (default: go)
# Every architecture is built with CGO_ENABLED=$RELEASE_CGO (1: the PKCS#11
# backend via crypto11, which dlopens the module) by Debian's C compiler for
# it (gcc, aarch64-linux-gnu-gcc, arm-linux-gnueabihf-gcc: make
# deps-packages installs the cross compilers) against a Debian 11 (bullseye)
# libc sysroot (scripts/sysroot.sh, downloaded once into dist/cache), with
# libgcc linked statically: the binaries run on Debian 11, RHEL 8 and newer.
# The package's dependencies are read from the binaries: the shared libraries
# (readelf -d, mapped to the sysroot's Debian packages and to rpm sonames)
# and the newest GLIBC_ symbol version they use (readelf -V), declared as
# Depends: libc6 (>= X) and Requires: libc.so.6(GLIBC_X).
# Man pages and shell completions come from internal/gendocs (the cobra
# command trees); /usr/share/doc/<package>/copyright from LICENSE.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: build.sh OUTDIR (run by make packages)}
for v in RELEASE_CGO RELEASE_FLAGS RELEASE_LDFLAGS; do
  [ -n "${!v:-}" ] || { echo "build.sh: $v is not set: run it as make packages" >&2; exit 1; }
done
GO=${GO:-go}
ARCHES=${ARCHES:-amd64 arm64 armhf}

# v1.2.3 -> 1.2.3; v1.2.3-4-gabc -> 1.2.3+4.gabc; no tag -> 0.0.0+git<commits>.g<hash>;
# a tree with uncommitted changes gets .dirty.
version() {
  if [ -n "${VERSION:-}" ]; then echo "$VERSION"; return; fi
  local d
  if d=$(git describe --tags --match 'v[0-9]*' --dirty 2>/dev/null); then
    d=${d#v}
    sed -E 's/-([0-9]+)-g([0-9a-f]+)/+\1.g\2/; s/-dirty$/.dirty/' <<<"$d"
  else
    d="0.0.0+git$(git rev-list --count HEAD).g$(git rev-parse --short=12 HEAD)"
    git diff --quiet HEAD -- 2>/dev/null || d+=.dirty
    echo "$d"
  fi
}
ver=$(version)

# per Debian architecture: rpm's name, nfpm's name, GOARCH, GOARM, the C compiler
rpm_arch() { case $1 in amd64) echo x86_64 ;; arm64) echo aarch64 ;; armhf) echo armv7hl ;; esac; }
nfpm_arch() { case $1 in armhf) echo arm7 ;; *) echo "$1" ;; esac; }
go_arch() { case $1 in armhf) echo arm ;; *) echo "$1" ;; esac; }
triplet() { case $1 in amd64) echo x86_64-linux-gnu ;; arm64) echo aarch64-linux-gnu ;; armhf) echo arm-linux-gnueabihf ;; esac; }
if ! [[ $ver =~ ^[0-9][A-Za-z0-9.+~]*$ ]]; then
  echo "build.sh: version '$ver' is not usable for deb and rpm (digits first, then letters, digits, . + ~; no -)" >&2
  exit 1
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}

# package NAME CONFIG BINARY...: the .deb and .rpm of one nfpm config for
# $arch, whose library dependencies are those the given binaries (in $bin)
# need: read with readelf, mapped to Debian packages with dpkg -S and to rpm
# sonames.
package() {
  local name=$1 config=$2
  shift 2
  local deb_libs=() rpm_libs=() so pkg i floor bits=""
  [ "$arch" = armhf ] || bits="(64bit)"
  # the newest GLIBC_x.y any of the binaries asks for (readelf -V: version needs)
  floor=$(cd "$bin" && readelf -W -V "$@" | sed -n 's/.*Name: GLIBC_\([0-9][0-9.]*\) .*/\1/p' | sort -uV | tail -1)
  for so in $(cd "$bin" && readelf -d "$@" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u); do
    pkg=$(grep -l -E "/$so\$" "$sysroot"/.files/* 2>/dev/null | head -1 | xargs -r basename)
    if [ -z "$pkg" ]; then
      echo "build.sh: no package of the $arch sysroot ($sysroot) holds $so (needed by the $arch $name binaries)" >&2
      exit 1
    fi
    if [ "$so" = libc.so.6 ]; then
      [ -n "$floor" ] || { echo "build.sh: the $arch $name binaries link libc.so.6 but need no GLIBC_ version?" >&2; exit 1; }
      rpm_libs+=("libc.so.6(GLIBC_$floor)$bits")
    else
      rpm_libs+=("$so()$bits")
    fi
    [ "$pkg" = libc6 ] && pkg="libc6 (>= $floor)"
    [[ " ${deb_libs[*]} " == *" $pkg "* ]] || deb_libs+=("$pkg")
  done
  if [ ${#deb_libs[@]} -gt 4 ] || [ ${#rpm_libs[@]} -gt 4 ]; then
    echo "build.sh: the $arch $name binaries need ${#rpm_libs[@]} libraries (${rpm_libs[*]}); $config has 4 slots" >&2
    exit 1
  fi
  for i in 1 2 3 4; do
    export BOOTCERT_DEB_LIB$i="${deb_libs[i-1]:-}" BOOTCERT_RPM_LIB$i="${rpm_libs[i-1]:-}"
  done
  # man pages, completions, copyright: a tree nfpm copies to /usr/share
  export BOOTCERT_SHARE=$stage/share-$name
  if [ ! -d "$BOOTCERT_SHARE" ]; then
    $GO run ./internal/gendocs/cmd/gendocs -o "$BOOTCERT_SHARE.tmp" "$name"
    mkdir -p "$BOOTCERT_SHARE.tmp/usr/share/doc/$name"
    copyright "$name" >"$BOOTCERT_SHARE.tmp/usr/share/doc/$name/copyright"
    mv "$BOOTCERT_SHARE.tmp/usr/share" "$BOOTCERT_SHARE"
  fi
  # each format's own file name convention: name_version_arch.deb (Debian),
  # name-version-release.arch.rpm (rpm: x86_64, aarch64, armv7hl)
  local deb="$out/${name}_${ver}_${arch}.deb" rpm="$out/${name}-${ver}-1.$(rpm_arch "$arch").rpm"
  $GO tool -modfile=tools/go.mod nfpm package -f "$config" -p deb -t "$deb" >/dev/null
  $GO tool -modfile=tools/go.mod nfpm package -f "$config" -p rpm -t "$rpm" >/dev/null
  echo "$deb $rpm (cgo=$RELEASE_CGO, glibc >= ${floor:-none}, needs: ${deb_libs[*]:-nothing})"
}

# copyright NAME: Debian's machine-readable copyright file, with the full
# license text (rpm-based systems have no /usr/share/common-licenses)
copyright() {
  cat <<EOC
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: $1
Source: https://github.com/bootcert/bootcert

Files: *
Copyright: bootcert contributors
License: Apache-2.0

License: Apache-2.0
EOC
  sed 's/^[[:space:]]*$/./; s/^/ /' LICENSE
}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$out"

for arch in $ARCHES; do
  case $arch in amd64|arm64|armhf) ;; *) echo "build.sh: unsupported architecture '$arch' (amd64, arm64, armhf)" >&2; exit 1 ;; esac
  cc=$(triplet "$arch")-gcc
  command -v "$cc" >/dev/null || { echo "build.sh: $cc not found (make deps-packages installs Debian's cross compilers)" >&2; exit 1; }
  sysroot=$(scripts/sysroot.sh "$arch")
  bin=$stage/$arch
  mkdir -p "$bin"
  # the native gcc searches its own prefix's /usr/lib/<triplet> before the
  # sysroot's (the cross compilers do not): -B and -L put the sysroot first
  lib=$(triplet "$arch")
  ldflags="-static-libgcc -B$sysroot/usr/lib/$lib -L$sysroot/usr/lib/$lib -L$sysroot/lib/$lib"
  GOOS=linux GOARCH=$(go_arch "$arch") GOARM=7 CGO_ENABLED=$RELEASE_CGO CC="$cc --sysroot=$sysroot" CGO_LDFLAGS="$ldflags" \
    $GO build $RELEASE_FLAGS ${RELEASE_GCFLAGS:-} -ldflags="$RELEASE_LDFLAGS -X github.com/bootcert/bootcert/internal/version.Version=$ver" -o "$bin/" ./cmd/bootcertd ./cmd/bootcertctl ./cmd/bootcert-admin
  export BOOTCERT_VERSION=$ver BOOTCERT_ARCH=$(nfpm_arch "$arch") BOOTCERT_BIN=$bin
  package bootcert nfpm.yaml bootcertd bootcertctl
  package bootcert-admin nfpm-admin.yaml bootcert-admin
done
