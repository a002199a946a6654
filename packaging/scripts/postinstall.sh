#!/bin/sh
# bootcert postinstall. deb (postinst): $1 = configure, $2 = the version
# replaced on upgrade (empty on first install); abort-* on error unwinding.
# rpm (%post): $1 = 1 on install, 2 on upgrade.
#
# Creates the bootcert user (member of tss, for /dev/tpmrm0) and the state and
# config directories. Does NOT enable or start bootcertd: the shipped
# /etc/bootcert/bootcertd.toml names an example endpoint and factory files
# (bootstrap certificate and key) that the operator or the factory image puts
# in place first; `systemctl enable --now bootcertd` after
# `bootcertd --check-config /etc/bootcert/bootcertd.toml` passes. On upgrade a
# running bootcertd is restarted so the new binary takes over.
set -e

upgrade=no
case "$1" in
  configure) [ -n "$2" ] && upgrade=yes ;;
  abort-upgrade|abort-remove|abort-deconfigure) exit 0 ;;
  1) ;;
  2) upgrade=yes ;;
esac

systemd-sysusers /usr/lib/sysusers.d/bootcert.conf
systemd-tmpfiles --create /usr/lib/tmpfiles.d/bootcert.conf

# Only with a running systemd (not in a chroot, an image build or a container
# without systemd as PID 1).
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  if [ "$upgrade" = yes ]; then
    systemctl try-restart bootcertd.service || true
  else
    echo "bootcert: edit /etc/bootcert/bootcertd.toml, check it with" \
      "'bootcertd --check-config /etc/bootcert/bootcertd.toml'," \
      "then 'systemctl enable --now bootcertd'"
  fi
fi
exit 0
