package ctl

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/bootcert/bootcert/factory"
	"github.com/bootcert/bootcert/internal/testenv"
)

// ownerOf is a file's uid:gid.
func ownerOf(t *testing.T, path string) (int, int) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	s := st.Sys().(*syscall.Stat_t)
	return int(s.Uid), int(s.Gid)
}

// pretendDaemonUser makes the user database answer for bootcertd's user with
// an existing account (this machine has no bootcert user), and restores it.
func pretendDaemonUser(t *testing.T, as *user.User) {
	t.Helper()
	old := lookupUser
	lookupUser = func(name string) (*user.User, error) {
		if name == daemonUser {
			return as, nil
		}
		return old(name)
	}
	t.Cleanup(func() { lookupUser = old })
}

func nobody(t *testing.T) (*user.User, int, int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("giving files to another user needs root (the factory commands run as root on a device)")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("no user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if uid == 0 || gid == 0 {
		t.Fatalf("nobody is %d:%d", uid, gid)
	}
	return u, uid, gid
}

// Provisioning on the device as root leaves the key files (TPM key blobs,
// the attestation key's) and the certificate owned by bootcertd's user when
// that user exists: the daemon (User=bootcert) can read its key. Before,
// they stayed 0600 root:root and bootcertd retried "permission denied" for
// ever.
func TestProvisionGivesFilesToDaemonUser(t *testing.T) {
	testenv.Require(t, "swtpm")
	nb, uid, gid := nobody(t)
	pretendDaemonUser(t, nb)
	sw := testenv.StartSWTPM(t)
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	mustCtl(t, "ca", "create", "--out", caDir)
	caKey := "file:" + filepath.Join(caDir, "ca.key")

	boot := filepath.Join(dir, "boot.tpmkey")
	op := filepath.Join(dir, "op.tpmkey")
	rep := decodeJSON[factory.Report](t, mustCtl(t, provisionArgs(dir, caKey, "gw-own-1", tpmURI(sw, boot), "--final-key", tpmURI(sw, op))...))
	if rep.Status != "provisioned" || rep.Owner != nb.Username+":"+groupName(t, gid) {
		t.Fatalf("report status %q owner %q", rep.Status, rep.Owner)
	}
	for _, f := range []string{boot, op, filepath.Join(dir, "boot.ak.tpmkey"), rep.Certificate} {
		if u, g := ownerOf(t, f); u != uid || g != gid {
			t.Errorf("%s is owned by %d:%d, want the daemon's user %d:%d", f, u, g, uid, gid)
		}
		if strings.HasSuffix(f, ".tpmkey") {
			if st, _ := os.Stat(f); st.Mode().Perm() != 0o600 {
				t.Errorf("%s has mode %v, want 0600", f, st.Mode().Perm())
			}
		}
	}
	// The station's manifest is not the device's: it keeps its owner.
	if u, _ := ownerOf(t, filepath.Join(dir, "manifest.csv")); u != 0 {
		t.Errorf("manifest given to %d", u)
	}
}

func groupName(t *testing.T, gid int) string {
	g, err := user.LookupGroupId(strconv.Itoa(gid))
	if err != nil {
		t.Fatal(err)
	}
	return g.Name
}

// --owner names the owner; "none" and a non-root run leave files alone;
// a re-run over root-owned files says how to fix them; a wrong owner is
// refused before anything is made.
func TestOwnerFlag(t *testing.T) {
	nb, uid, gid := nobody(t)
	dir := t.TempDir()

	k1 := filepath.Join(dir, "keys", "k1.pem") // keys/ is created, and given too
	mustCtl(t, "key", "generate", "--owner", "nobody", "file:"+k1, "--json")
	for _, f := range []string{k1, filepath.Dir(k1)} {
		if u, g := ownerOf(t, f); u != uid || g != gid {
			t.Errorf("--owner nobody: %s owned by %d:%d, want %d:%d", f, u, g, uid, gid)
		}
	}
	k2 := filepath.Join(dir, "k2.pem")
	mustCtl(t, "key", "generate", "--owner", "0:"+strconv.Itoa(gid), "file:"+k2)
	if u, g := ownerOf(t, k2); u != 0 || g != gid {
		t.Errorf("--owner 0:%d: owned by %d:%d", gid, u, g)
	}

	pretendDaemonUser(t, nb)
	k3 := filepath.Join(dir, "k3.pem")
	mustCtl(t, "key", "generate", "--owner", "none", "file:"+k3)
	if u, _ := ownerOf(t, k3); u != 0 {
		t.Errorf("--owner none: owned by %d", u)
	}
	oldEUID := geteuid
	geteuid = func() int { return 1000 }
	k4 := filepath.Join(dir, "k4.pem")
	mustCtl(t, "key", "generate", "file:"+k4)
	geteuid = oldEUID
	if u, _ := ownerOf(t, k4); u != 0 {
		t.Errorf("not root: the default owner was applied (%d)", u)
	}
	k5 := filepath.Join(dir, "k5.pem")
	mustCtl(t, "key", "generate", "file:"+k5)
	if u, g := ownerOf(t, k5); u != uid || g != gid {
		t.Errorf("default as root with the daemon's user present: owned by %d:%d, want %d:%d", u, g, uid, gid)
	}

	for _, bad := range []string{"no-such-user-xyz", "nobody:", ":root", "nobody:no-such-group-xyz"} {
		k := filepath.Join(dir, "bad.pem")
		_, _, err := runCtl(t, "key", "generate", "--owner", bad, "file:"+k)
		if err == nil || !strings.Contains(err.Error(), "--owner") {
			t.Errorf("--owner %q: err = %v, want one naming --owner", bad, err)
		}
		if _, serr := os.Stat(k); serr == nil {
			t.Errorf("--owner %q: a key was made anyway", bad)
		}
	}

	// An identity provisioned earlier as root: the re-run changes nothing
	// and says how to give the files to the daemon's user.
	caDir := filepath.Join(dir, "ca")
	mustCtl(t, "ca", "create", "--out", caDir)
	caKey := "file:" + filepath.Join(caDir, "ca.key")
	key := "file:" + filepath.Join(dir, "gw-own-2.key")
	mustCtl(t, provisionArgs(dir, caKey, "gw-own-2", key, "--allow-software-key", "--owner", "none")...)
	rep := decodeJSON[factory.Report](t, mustCtl(t, provisionArgs(dir, caKey, "gw-own-2", key, "--allow-software-key")...))
	if rep.Status != "exists" {
		t.Fatalf("re-run: %+v", rep)
	}
	w := strings.Join(rep.Warnings, "\n")
	for _, f := range []string{filepath.Join(dir, "gw-own-2.key"), rep.Certificate} {
		if !strings.Contains(w, "chown "+strconv.Itoa(uid)+":"+strconv.Itoa(gid)+" "+f) {
			t.Errorf("re-run warnings do not say how to fix %s:\n%s", f, w)
		}
		if u, _ := ownerOf(t, f); u != 0 {
			t.Errorf("re-run changed the owner of %s", f)
		}
	}
}
