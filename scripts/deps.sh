#!/usr/bin/env bash
# Installs the Debian packages bootcert's tests, demo and packaging need,
# only those that are missing. Safe to run again.
#   scripts/deps.sh            what make test and make demo need
#   scripts/deps.sh packages   also what make test-packages needs: Debian's
#                              C cross compilers for arm64 and armhf (cgo
#                              builds, so PKCS#11 works there), qemu-user-static
#                              (runs them)
# gnupg and apt-utils (apt-ftparchive) sign the packages (packaging/release/sign.sh);
# xz-utils and debian-archive-keyring check and unpack the Debian 11 libc that
# make packages builds against (scripts/sysroot.sh; make test builds the amd64 packages).
set -euo pipefail
# libc6-dev: cgo needs the C headers; gcc with --no-install-recommends does not bring them.
pkgs=(swtpm swtpm-tools tpm2-tools tpm2-openssl softhsm2 opensc libtpm2-pkcs11-1 libtpm2-pkcs11-tools
      mosquitto mosquitto-clients openssl curl libssl-dev gcc libc6-dev rpm cpio debootstrap systemd-container
      gnupg apt-utils xz-utils debian-archive-keyring)
if [ "${1:-}" = packages ]; then
  pkgs+=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf qemu-user-static)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm run the official AWS IoT Device SDK for JavaScript in
# cloud/compat (a second device client). Checked by command, not by package:
# a Node.js from elsewhere (e.g. NodeSource's nodejs, which bundles npm and
# conflicts with Debian's npm package) is kept.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
