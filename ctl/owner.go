package ctl

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bootcert/bootcert/keystore"
)

// daemonUser is bootcertd's user, made by the package (systemd/bootcert.sysusers).
const daemonUser = "bootcert"

// Seams for tests: who runs bootcertctl, and the user database.
var (
	geteuid     = os.Geteuid
	lookupUser  = user.Lookup
	lookupGroup = user.LookupGroup
)

const ownerHelp = `owner USER[:GROUP] (names or numbers) of the files written on the device (key files, TPM key blobs, certificate); ` +
	`default when run as root: ` + daemonUser + ` (bootcertd's user) if that user exists here, so the daemon can read them; "none" keeps the files root's`

// addOwnerFlag adds --owner to a command that writes files on the device.
func addOwnerFlag(cmd *cobra.Command) *string {
	return cmd.Flags().String("owner", "", ownerHelp)
}

// resolveOwner turns --owner into the owner of the files written, or nil to
// leave them to the user running bootcertctl. An empty flag means the
// daemon's user when bootcertctl runs as root and that user exists (a device
// with the package installed); elsewhere (a factory station writing into a
// mounted image, a developer's account) nothing changes.
func resolveOwner(flag string) (*keystore.Owner, error) {
	switch flag {
	case "none":
		return nil, nil
	case "":
		if geteuid() != 0 {
			return nil, nil
		}
		if _, err := lookupUser(daemonUser); err != nil {
			return nil, nil
		}
		flag = daemonUser
	}
	name, group, hasGroup := strings.Cut(flag, ":")
	if name == "" || (hasGroup && group == "") {
		return nil, fmt.Errorf("--owner %q: give USER or USER:GROUP (names or numeric IDs), or none", flag)
	}
	o := keystore.Owner{}
	var primaryGID string
	if id, err := strconv.Atoi(name); err == nil && id >= 0 {
		o.UID = id
		if u, err := user.LookupId(name); err == nil {
			primaryGID = u.Gid
		}
	} else {
		u, err := lookupUser(name)
		if err != nil {
			var unknown user.UnknownUserError
			if errors.As(err, &unknown) {
				return nil, fmt.Errorf("--owner %q: no user %q on this machine (for a mounted device image give numeric IDs, USER_ID:GROUP_ID, as that image's /etc/passwd has them)", flag, name)
			}
			return nil, fmt.Errorf("--owner %q: %w", flag, err)
		}
		o.UID, _ = strconv.Atoi(u.Uid)
		primaryGID = u.Gid
	}
	switch {
	case !hasGroup:
		if primaryGID == "" {
			return nil, fmt.Errorf("--owner %q: user %s has no primary group known here; give USER:GROUP", flag, name)
		}
		o.GID, _ = strconv.Atoi(primaryGID)
	default:
		if id, err := strconv.Atoi(group); err == nil && id >= 0 {
			o.GID = id
		} else {
			g, err := lookupGroup(group)
			if err != nil {
				return nil, fmt.Errorf("--owner %q: no group %q on this machine: %w", flag, group, err)
			}
			o.GID, _ = strconv.Atoi(g.Gid)
		}
	}
	o.Name = fmt.Sprintf("%d:%d", o.UID, o.GID)
	if u, err := user.LookupId(strconv.Itoa(o.UID)); err == nil {
		if g, err := user.LookupGroupId(strconv.Itoa(o.GID)); err == nil {
			o.Name = u.Username + ":" + g.Name
		}
	}
	return &o, nil
}
