#!/bin/sh
# bootcert preremove. deb (prerm): $1 = remove | upgrade | deconfigure |
# failed-upgrade. rpm (%preun): $1 = 0 on removal, 1 on upgrade (the old
# package's script, run after the new one's %post).
# Stops and disables bootcertd on removal only; an upgrade restarts it from
# postinstall instead.
set -e
case "$1" in
  remove|0)
    if [ -d /run/systemd/system ]; then
      systemctl stop bootcertd.service || true
    fi
    # the [Install] symlink would dangle once the unit file is gone
    if command -v systemctl >/dev/null 2>&1; then
      systemctl disable bootcertd.service >/dev/null 2>&1 || true
    fi
    ;;
esac
exit 0
