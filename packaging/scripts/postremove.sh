#!/bin/sh
# bootcert postremove. deb (postrm): $1 = remove | purge | upgrade |
# failed-upgrade | abort-install | abort-upgrade | disappear. rpm (%postun):
# $1 = 0 on removal, 1 on upgrade.
#
# Never deletes state, not even on purge: /var/lib/bootcert holds the
# credential generations, the rotation journal and the TPM key blobs, and
# /etc/bootcert the factory's bootstrap certificate and PIN file. Their keys
# live in the TPM or PKCS#11 token; deleting the files would orphan those keys
# and leave the gateway without an identity on reinstall. The bootcert user
# stays too (files it owns keep their owner). dpkg --purge does delete the
# conffile /etc/bootcert/bootcertd.toml, edited or not (dpkg's rule for
# conffiles), before this script runs.
set -e
case "$1" in
  remove|purge|0)
    if [ -d /run/systemd/system ]; then
      systemctl daemon-reload || true
    fi
    if [ "$1" = purge ]; then
      echo "bootcert: kept /var/lib/bootcert and the factory files in /etc/bootcert (device identity; keys are in hardware); remove them by hand to decommission. dpkg deleted the conffile /etc/bootcert/bootcertd.toml (also when edited)"
    fi
    ;;
esac
exit 0
