#!/usr/bin/env bash
# Signs the packages make packages built, with the release key:
#   packaging/release/sign.sh DIST
# - every DIST/*.rpm in place (rpmsign --addsign: an OpenPGP signature in
#   the rpm header; verify with rpm -K after rpm --import of the public key);
# - an apt repository of every DIST/*.deb in DIST/apt: pool/main/, a
#   Packages index per architecture under dists/stable/main/, and Release
#   (apt-ftparchive) signed twice: InRelease (gpg --clearsign) and
#   Release.gpg (detached), which apt checks against the key named by
#   signed-by= in the source entry;
# - the public key, for the install docs: DIST/apt/bootcert-archive-keyring.gpg
#   (binary, for /usr/share/keyrings and signed-by=) and
#   DIST/RPM-GPG-KEY-bootcert (armoured, for rpm --import).
# Environment:
#   BOOTCERT_SIGN_KEY   the signing key: fingerprint, key id or e-mail (required)
#   GNUPGHOME           the keyring directory holding its secret part (gpg's
#                       default otherwise); a key with a passphrase needs a
#                       gpg-agent that has it (gpg-preset-passphrase), or:
#   BOOTCERT_SIGN_PASSPHRASE_FILE  a file holding the passphrase (loopback)
# The key never leaves the keyring; nothing here prints it or the passphrase.
set -euo pipefail
dist=${1:?usage: sign.sh DIST (after make packages DIST=...)}
key=${BOOTCERT_SIGN_KEY:?sign.sh: set BOOTCERT_SIGN_KEY to the release key (fingerprint, id or e-mail) in GNUPGHOME}
for p in gpg rpmsign apt-ftparchive; do
  command -v $p >/dev/null || { echo "sign.sh: $p not found (make deps-packages)" >&2; exit 1; }
done
gpgopts=(--batch --yes --local-user "$key")
if [ -n "${BOOTCERT_SIGN_PASSPHRASE_FILE:-}" ]; then
  gpgopts+=(--pinentry-mode loopback --passphrase-file "$BOOTCERT_SIGN_PASSPHRASE_FILE")
fi
fpr=$(gpg --batch --with-colons --list-secret-keys "$key" 2>/dev/null | awk -F: '$1 == "fpr" { print $10; exit }')
[ -n "$fpr" ] || { echo "sign.sh: no secret key '$key' in ${GNUPGHOME:-~/.gnupg}" >&2; exit 1; }

shopt -s nullglob
debs=("$dist"/*.deb) rpms=("$dist"/*.rpm)
[ ${#debs[@]} -gt 0 ] || [ ${#rpms[@]} -gt 0 ] || { echo "sign.sh: no .deb or .rpm in $dist" >&2; exit 1; }

# rpm: rpmsign calls gpg with %__gpg_sign_cmd; the passphrase options go there
if [ ${#rpms[@]} -gt 0 ]; then
  signcmd='%{__gpg} gpg --no-verbose --no-armor --batch --no-secmem-warning'
  [ -n "${BOOTCERT_SIGN_PASSPHRASE_FILE:-}" ] && signcmd+=" --pinentry-mode loopback --passphrase-file \"$BOOTCERT_SIGN_PASSPHRASE_FILE\""
  signcmd+=' %{?_gpg_digest_algo:--digest-algo %{_gpg_digest_algo}} -u "%{_gpg_name}" -sbo %{__signature_filename} %{__plaintext_filename}'
  log=$(mktemp)
  if ! rpmsign --define "__gpg $(command -v gpg)" --define "_gpg_name $fpr" --define "__gpg_sign_cmd $signcmd" --addsign "${rpms[@]}" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; echo "sign.sh: rpmsign failed" >&2; exit 1
  fi
  rm -f "$log"
  echo "sign.sh: signed ${#rpms[@]} rpm(s) with $fpr"
fi

if [ ${#debs[@]} -gt 0 ]; then
  repo=$dist/apt
  rm -rf "$repo"
  mkdir -p "$repo/pool/main"
  cp "${debs[@]}" "$repo/pool/main/"
  archs=$(for d in "${debs[@]}"; do dpkg-deb -f "$d" Architecture; done | sort -u | tr '\n' ' ')
  (
    cd "$repo"
    for a in $archs; do
      mkdir -p "dists/stable/main/binary-$a"
      apt-ftparchive --arch "$a" packages pool/main >"dists/stable/main/binary-$a/Packages"
      gzip -9n -k "dists/stable/main/binary-$a/Packages"
    done
    apt-ftparchive \
      -o APT::FTPArchive::Release::Origin=bootcert -o APT::FTPArchive::Release::Label=bootcert \
      -o APT::FTPArchive::Release::Suite=stable -o APT::FTPArchive::Release::Codename=stable \
      -o APT::FTPArchive::Release::Components=main -o "APT::FTPArchive::Release::Architectures=${archs% }" \
      release dists/stable >dists/stable/Release.tmp
    mv dists/stable/Release.tmp dists/stable/Release
    gpg "${gpgopts[@]}" --digest-algo SHA512 --clearsign -o dists/stable/InRelease dists/stable/Release
    gpg "${gpgopts[@]}" --digest-algo SHA512 -abs -o dists/stable/Release.gpg dists/stable/Release
  )
  gpg --batch --yes --export "$fpr" >"$repo/bootcert-archive-keyring.gpg"
  echo "sign.sh: apt repository $repo (${#debs[@]} package(s): $archs), Release signed by $fpr"
fi
gpg --batch --yes --armor --export "$fpr" >"$dist/RPM-GPG-KEY-bootcert"
