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
#   ARCHES   architectures to build (default: "amd64 arm64")
#   GO       go command (default: go)
# The build machine's own architecture is built with CGO_ENABLED=$RELEASE_CGO
# (1: PKCS#11 backend via crypto11); other architectures with CGO_ENABLED=0
# (no C cross toolchain here): TPM backend only, a static binary. The
# package's shared library dependencies are read from the binaries (readelf)
# and mapped to Debian packages with dpkg -S and to rpm sonames.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: build.sh OUTDIR (run by make packages)}
for v in RELEASE_CGO RELEASE_FLAGS RELEASE_LDFLAGS; do
  [ -n "${!v:-}" ] || { echo "build.sh: $v is not set: run it as make packages" >&2; exit 1; }
done
GO=${GO:-go}
ARCHES=${ARCHES:-amd64 arm64}
host=$($GO env GOARCH)

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

# rpm's names for Go's architectures (nfpm maps the package's arch the same way)
rpm_arch() {
  case $1 in
    amd64) echo x86_64 ;;
    arm64) echo aarch64 ;;
    *) echo "$1" ;;
  esac
}
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
  local deb_libs=() rpm_libs=() so pkg i
  for so in $(cd "$bin" && readelf -d "$@" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u); do
    pkg=$(dpkg -S "*/$so" 2>/dev/null | sed -n "s/^\([^:,]*\):$arch: .*/\1/p" | sort -u | head -1)
    if [ -z "$pkg" ]; then
      echo "build.sh: no Debian package of architecture $arch holds $so (needed by the $arch $name binaries)" >&2
      exit 1
    fi
    deb_libs+=("$pkg")
    rpm_libs+=("$so()(64bit)")
  done
  if [ ${#deb_libs[@]} -gt 4 ]; then
    echo "build.sh: the $arch $name binaries need ${#deb_libs[@]} libraries (${deb_libs[*]}); $config has 4 slots" >&2
    exit 1
  fi
  for i in 1 2 3 4; do
    export BOOTCERT_DEB_LIB$i="${deb_libs[i-1]:-}" BOOTCERT_RPM_LIB$i="${rpm_libs[i-1]:-}"
  done
  # each format's own file name convention: name_version_arch.deb (Debian),
  # name-version-release.arch.rpm (rpm: x86_64, aarch64)
  local deb="$out/${name}_${ver}_${arch}.deb" rpm="$out/${name}-${ver}-1.$(rpm_arch "$arch").rpm"
  $GO tool -modfile=tools/go.mod nfpm package -f "$config" -p deb -t "$deb" >/dev/null
  $GO tool -modfile=tools/go.mod nfpm package -f "$config" -p rpm -t "$rpm" >/dev/null
  echo "$deb $rpm (cgo=$cgo, needs: ${deb_libs[*]:-nothing})"
}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$out"

for arch in $ARCHES; do
  case $arch in amd64|arm64) ;; *) echo "build.sh: unsupported architecture '$arch' (amd64, arm64)" >&2; exit 1 ;; esac
  cgo=0
  [ "$arch" = "$host" ] && cgo=$RELEASE_CGO
  bin=$stage/$arch
  mkdir -p "$bin"
  GOOS=linux GOARCH=$arch CGO_ENABLED=$cgo $GO build $RELEASE_FLAGS ${RELEASE_GCFLAGS:-} -ldflags="$RELEASE_LDFLAGS -X github.com/bootcert/bootcert/internal/version.Version=$ver" -o "$bin/" ./cmd/bootcertd ./cmd/bootcertctl ./cmd/bootcert-admin
  export BOOTCERT_VERSION=$ver BOOTCERT_ARCH=$arch BOOTCERT_BIN=$bin
  package bootcert nfpm.yaml bootcertd bootcertctl
  package bootcert-admin nfpm-admin.yaml bootcert-admin
done
