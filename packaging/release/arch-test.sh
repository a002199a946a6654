#!/usr/bin/env bash
# Architecture and distribution test of the packages (make test-packages,
# after install-test.sh). Downloads; needs root and make deps-packages.
#   1. builds the packages for amd64, arm64 and armhf (cgo: Debian's cross
#      compilers against Debian 11's libc) and signs them with a throwaway
#      key (sign.sh, a temporary GNUPGHOME): rpm -K passes with the key
#      imported and fails without it;
#   2. per architecture, a Debian 12 root (debootstrap minbase + systemd, the
#      arm64/armhf ones with that architecture added: dpkg --add-architecture,
#      its libc and SoftHSM2 installed multiarch) where apt installs bootcert
#      from the signed repository (signed-by= the exported key; a changed
#      Release is refused) and runs, under qemu-user for arm64 and armhf
#      (qemu-<arch>-static in the root, no binfmt needed): bootcertd
#      --version, bootcertctl --version, and a PKCS#11 key in a SoftHSM2 token
#      of that architecture (softhsm2-util --init-token, bootcertctl key
#      generate, key csr: the CSR's signature verifies with openssl);
#   3. the amd64 package in a Debian 11 root: dpkg -i, --version, the same
#      PKCS#11 key test with Debian 11's SoftHSM2.
# Roots are cached as tarballs in $BOOTCERT_PKG_CACHE (default dist/cache:
# under the ignored dist/, removed by make clean): debian12-minbase-systemd-procps-amd64
# (shared with install-test.sh), debian12-softhsm-<arch> (made from it),
# debian11-softhsm-amd64. Delete a tarball to refresh it.
set -euo pipefail
shopt -s inherit_errexit # a failure inside $(...) ends the script
cd "$(dirname "$0")/../.."
cache=$(realpath -m "${BOOTCERT_PKG_CACHE:-dist/cache}")
ARCHES=${ARCHES:-amd64 arm64 armhf}
t0=$(date +%s)
work=$(mktemp -d /tmp/bootcert-arch-test.XXXXXX)
mounts=() gnupghome=""
passed=0 summary=()

cleanup() {
  local m
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[i]}" 2>/dev/null || true; done
  if [ -n "$gnupghome" ]; then GNUPGHOME=$gnupghome gpgconf --kill all 2>/dev/null || true; rm -rf "$gnupghome"; fi
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

fail() { echo "arch-test: FAIL: $*" >&2; exit 1; }
ok() { echo "arch-test: ok: $*"; passed=$((passed + 1)); }
step() { echo "arch-test: --- $*" >&2; } # stderr: also from inside $(...)

[ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap, chroot, mount)"
for p in debootstrap dpkg-deb gpg gpgv rpm rpmsign apt-ftparchive openssl qemu-aarch64-static qemu-arm-static aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc; do
  command -v $p >/dev/null || fail "$p not found (run make deps-packages)"
done
url12=$(scripts/debian-mirror.sh bookworm)
[ -n "$url12" ] || fail "no bookworm deb source in /etc/apt/sources.list*; set MIRROR"
url11=$(scripts/debian-mirror.sh bullseye)
[ -n "$url11" ] || url11=$url12 # the same archive serves bullseye

qemu_of() { case $1 in arm64) echo qemu-aarch64-static ;; armhf) echo qemu-arm-static ;; esac; }

# --- 1. packages, signed
step "building packages ($ARCHES) and signing them with a throwaway key"
ts=$(date +%s)
make -s --no-print-directory packages DIST="$work/pkgs" VERSION=0.1.0 ARCHES="$ARCHES" >"$work/build.log" 2>&1 ||
  { cat "$work/build.log" >&2; fail "make packages"; }
grep 'bootcert_0.1.0' "$work/build.log" | sed "s|$work/pkgs/||g; s/^/arch-test:   /"
gnupghome=$(mktemp -d /tmp/gpg.XXXXXX)
chmod 700 "$gnupghome"
export GNUPGHOME=$gnupghome
gpg --batch --passphrase '' --quick-gen-key 'bootcert release test <release-test@bootcert.invalid>' rsa3072 sign never >/dev/null 2>&1 ||
  fail "gpg --quick-gen-key"
BOOTCERT_SIGN_KEY=release-test@bootcert.invalid packaging/release/sign.sh "$work/pkgs" >"$work/sign.log" 2>&1 ||
  { cat "$work/sign.log" >&2; fail "sign.sh"; }
unset GNUPGHOME
for rpm in "$work"/pkgs/*.rpm; do
  out=$(rpm --dbpath "$work/rpmdb-empty" -K "$rpm" 2>&1) && fail "rpm -K passed without the key: $out"
  grep -q 'SIGNATURES NOT OK' <<<"$out" || fail "rpm -K without the key: $out"
done
rpm --dbpath "$work/rpmdb" --import "$work/pkgs/RPM-GPG-KEY-bootcert"
for rpm in "$work"/pkgs/*.rpm; do
  out=$(rpm --dbpath "$work/rpmdb" -K "$rpm" 2>&1) || fail "rpm -K with the key: $out"
  grep -q 'digests signatures OK' <<<"$out" || fail "rpm -K with the key: $out"
done
ok "$(ls "$work"/pkgs/*.rpm | wc -l) rpms signed: rpm -K passes with RPM-GPG-KEY-bootcert imported, fails without"
summary+=("build+sign ($ARCHES): $(($(date +%s) - ts)) s")

# --- roots
# cached NAME SUITE URL SETUP: a tarball of a debootstrapped root, made once
# (SETUP runs in the fresh root, chrooted, /proc mounted, then is cached too)
withproc() { mount -t proc proc "$1/proc"; mounts+=("$1/proc"); }
unmount_last() { umount "${mounts[-1]}"; unset 'mounts[-1]'; }
unmount_all() { while [ ${#mounts[@]} -gt 0 ]; do unmount_last; done; }
base() { # NAME SUITE URL INCLUDE
  local tarball=$cache/$1.tar.gz
  if [ ! -s "$tarball" ]; then
    step "debootstrap $2 (minbase + $4); cached in $tarball"
    mkdir -p "$cache"
    debootstrap --variant=minbase --include="$4" "$2" "$work/base" "$3" >"$work/debootstrap.log" 2>&1 ||
      { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap $2"; }
    rm -rf "$work/base/var/cache/apt/archives/"*.deb
    tar -C "$work/base" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$work/base"
  fi
  echo "$tarball"
}
# softhsm_root NAME FROM-TARBALL ARCH: FROM plus SoftHSM2 of ARCH (multiarch)
softhsm_root() {
  local tarball=$cache/$1.tar.gz from=$2 a=$3 R=$work/prep
  if [ ! -s "$tarball" ]; then
    step "preparing $1: SoftHSM2 ($a) with apt; cached in $tarball"
    rm -rf "$R" && mkdir -p "$R" && tar -C "$R" -xzf "$from"
    cp /etc/resolv.conf "$R/etc/resolv.conf"
    withproc "$R"
    local native
    native=$(chroot "$R" dpkg --print-architecture)
    [ "$a" = "$native" ] || chroot "$R" dpkg --add-architecture "$a"
    chroot "$R" apt-get update -qq >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; fail "$1: apt-get update"; }
    DEBIAN_FRONTEND=noninteractive chroot "$R" apt-get install -y -qq --no-install-recommends "softhsm2:$a" >"$work/apt.log" 2>&1 ||
      { cat "$work/apt.log" >&2; fail "$1: apt-get install softhsm2:$a"; }
    chroot "$R" apt-get clean
    unmount_last
    tar -C "$R" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$R"
  fi
  echo "$tarball"
}

# inroot ROOT ARCH PROGRAM ARGS...: runs an ARCH program in ROOT (qemu-user for
# a foreign architecture: the static qemu copied into the root loads the
# program's own dynamic linker and libraries from there)
inroot() {
  local R=$1 a=$2 q
  shift 2
  q=$(qemu_of "$a")
  if [ -n "$q" ]; then
    chroot "$R" env SOFTHSM2_CONF=/var/tmp/softhsm2.conf "/usr/bin/$q" "$@"
  else
    chroot "$R" env SOFTHSM2_CONF=/var/tmp/softhsm2.conf "$@"
  fi
}

# pkcs11_key ROOT ARCH LABEL: a SoftHSM2 token of ARCH made by its own
# softhsm2-util, a key generated in it by bootcertctl, a CSR signed by it
pkcs11_key() {
  local R=$1 a=$2 what=$3 out
  # the token store on a tmpfs: a 32-bit softhsm2 (armhf, built without
  # large file support) cannot readdir() an ext4 directory from a 64-bit
  # kernel (EOVERFLOW on the 64-bit hash cookies) and cannot find the token
  # it has just made; on a real 32-bit kernel the cookies fit
  mkdir -p "$R/var/tmp/tokens"
  mount -t tmpfs -o size=16m,mode=0700 tmpfs "$R/var/tmp/tokens"
  mounts+=("$R/var/tmp/tokens")
  printf 'directories.tokendir = /var/tmp/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' >"$R/var/tmp/softhsm2.conf"
  printf '1234\n' >"$R/var/tmp/pin" && chmod 600 "$R/var/tmp/pin"
  inroot "$R" "$a" /usr/bin/softhsm2-util --init-token --free --label gw --pin 1234 --so-pin 5678 >"$work/softhsm.log" 2>&1 ||
    { cat "$work/softhsm.log" >&2; fail "$what: softhsm2-util --init-token ($a)"; }
  local file
  file=$(chroot "$R" readlink -f /usr/lib/softhsm/libsofthsm2.so)
  local uri='pkcs11:token=gw;object=op-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/var/tmp/pin'
  out=$(inroot "$R" "$a" /usr/bin/bootcertctl key generate "$uri" 2>&1) || fail "$what: bootcertctl key generate $uri: $out"
  out=$(inroot "$R" "$a" /usr/bin/bootcertctl key csr "$uri" --cn gw-1 2>&1) || fail "$what: bootcertctl key csr: $out"
  grep -q -- '-----BEGIN CERTIFICATE REQUEST-----' <<<"$out" || fail "$what: key csr printed no CSR: $out"
  openssl req -noout -verify <<<"$out" >/dev/null 2>&1 || fail "$what: the CSR's signature does not verify"
  subj=$(openssl req -noout -subject <<<"$out")
  grep -q 'CN *= *gw-1' <<<"$subj" || fail "$what: CSR subject $subj"
  out=$(inroot "$R" "$a" /usr/bin/bootcertctl key info "$uri" 2>&1) || fail "$what: key info: $out"
  ok "$what: PKCS#11 key in a SoftHSM2 token ($(readelf -h "$R$file" | sed -n "s/.*Machine: *//p")): key generate, CSR signed in the token verifies (openssl req -verify)"
}

versions() { # ROOT ARCH WHAT
  local out b
  for b in bootcertd bootcertctl; do
    out=$(inroot "$1" "$2" /usr/bin/$b --version 2>&1) || fail "$3: $b --version: $out"
    [ "$out" = "$b 0.1.0" ] || fail "$3: $b --version printed '$out'"
  done
  ok "$3: bootcertd --version, bootcertctl --version: 0.1.0"
}

base12=$(base debian12-minbase-systemd-procps-amd64 bookworm "$url12" systemd,procps)

# --- 2. Debian 12, each architecture, from the signed apt repository
tampered_checked=no
for a in $ARCHES; do
  ts=$(date +%s)
  step "Debian 12, $a: apt install from the signed repository, run"
  tb=$(softhsm_root "debian12-softhsm-$a" "$base12" "$a")
  R=$work/d12-$a
  mkdir -p "$R" && tar -C "$R" -xzf "$tb"
  withproc "$R"
  q=$(qemu_of "$a")
  [ -z "$q" ] || cp "$(command -v "$q")" "$R/usr/bin/"
  mkdir -p "$R/srv"
  cp -r "$work/pkgs/apt" "$R/srv/bootcert-apt"
  install -m 0644 "$work/pkgs/apt/bootcert-archive-keyring.gpg" "$R/usr/share/keyrings/bootcert-archive-keyring.gpg"
  # only the bootcert source: no network needed
  echo 'deb [signed-by=/usr/share/keyrings/bootcert-archive-keyring.gpg] file:/srv/bootcert-apt stable main' >"$R/etc/apt/sources.list.d/bootcert.list"
  aptopts=(-o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts=/etc/apt/sources.list.d -o APT::Get::List-Cleanup=0)
  if [ $tampered_checked = no ]; then
    # a Release changed after signing: apt refuses it
    cp -r "$R/srv/bootcert-apt" "$R/srv/tampered"
    sed -i 's/^Label: bootcert$/Label: bootcert-changed/' "$R/srv/tampered/dists/stable/InRelease"
    cmp -s "$R/srv/tampered/dists/stable/InRelease" "$R/srv/bootcert-apt/dists/stable/InRelease" && fail "tampering did not change InRelease"
    rm "$R/srv/tampered/dists/stable/Release.gpg"
    echo 'deb [signed-by=/usr/share/keyrings/bootcert-archive-keyring.gpg] file:/srv/tampered stable main' >"$R/etc/apt/sources.list.d/bootcert.list"
    out=$(chroot "$R" apt-get "${aptopts[@]}" update 2>&1) && fail "apt-get update accepted a changed InRelease: $out"
    grep -qE 'NO_PUBKEY|BADSIG|not signed|invalid' <<<"$out" || fail "apt-get update on a changed InRelease: $out"
    echo 'deb [signed-by=/usr/share/keyrings/bootcert-archive-keyring.gpg] file:/srv/bootcert-apt stable main' >"$R/etc/apt/sources.list.d/bootcert.list"
    rm -rf "$R/srv/tampered" "$R/var/lib/apt/lists/"*tampered*
    ok "apt-get update refuses a changed InRelease ($(grep -oE 'BADSIG|NO_PUBKEY|not signed' <<<"$out" | head -1))"
    tampered_checked=yes
  fi
  out=$(chroot "$R" apt-get "${aptopts[@]}" update 2>&1) || fail "$a: apt-get update (signed repository): $out"
  grep -qE 'W: |E: ' <<<"$out" && fail "$a: apt-get update warned: $out"
  DEBIAN_FRONTEND=noninteractive chroot "$R" apt-get "${aptopts[@]}" install -y -qq --no-install-recommends "bootcert:$a" >"$work/apt.log" 2>&1 ||
    { cat "$work/apt.log" >&2; fail "$a: apt-get install bootcert:$a"; }
  [ "$(chroot "$R" dpkg-query -W -f='${Status} ${Version} ${Architecture}' "bootcert:$a")" = "install ok installed 0.1.0-1 $a" ] ||
    fail "$a: bootcert:$a not installed"
  ok "Debian 12 $a: apt installed bootcert:$a 0.1.0-1 from the signed repository (signed-by=, Depends: $(chroot "$R" dpkg-query -W -f='${Depends}' "bootcert:$a" | cut -d, -f1))"
  [ -s "$R/usr/share/man/man8/bootcertd.8.gz" ] && [ -s "$R/usr/share/bash-completion/completions/bootcertctl" ] || fail "$a: man page or completion missing"
  versions "$R" "$a" "Debian 12 $a"
  pkcs11_key "$R" "$a" "Debian 12 $a"
  unmount_all
  rm -rf --one-file-system "$R"
  summary+=("Debian 12 $a: $(($(date +%s) - ts)) s")
done

# --- 3. Debian 11, amd64
if [[ " $ARCHES " == *" amd64 "* ]]; then
  ts=$(date +%s)
  step "Debian 11, amd64: dpkg -i, run"
  tb=$(base debian11-softhsm-amd64 bullseye "$url11" systemd,procps,softhsm2)
  R=$work/d11
  mkdir -p "$R" && tar -C "$R" -xzf "$tb"
  withproc "$R"
  cp "$work/pkgs/bootcert_0.1.0_amd64.deb" "$R/var/tmp/"
  chroot "$R" dpkg -i /var/tmp/bootcert_0.1.0_amd64.deb >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "Debian 11: dpkg -i"; }
  chroot "$R" id -u bootcert >/dev/null || fail "Debian 11: no user bootcert"
  [ "$(chroot "$R" stat -c '%a %U:%G' /var/lib/bootcert)" = "700 bootcert:bootcert" ] || fail "Debian 11: /var/lib/bootcert mode"
  ok "Debian 11 amd64: dpkg -i bootcert_0.1.0_amd64.deb (glibc $(chroot "$R" dpkg-query -W -f='${Version}' libc6)), user and state directory made"
  versions "$R" amd64 "Debian 11 amd64"
  pkcs11_key "$R" amd64 "Debian 11 amd64"
  unmount_all
  summary+=("Debian 11 amd64: $(($(date +%s) - ts)) s")
fi

echo "arch-test: summary"
for s in "${summary[@]}"; do echo "arch-test:   $s"; done
echo "arch-test: $passed passed, 0 failed ($(($(date +%s) - t0)) s)"
