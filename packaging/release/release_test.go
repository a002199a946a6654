package release

import (
	"bytes"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/bootcert/bootcert/internal/gendocs"
	"github.com/bootcert/bootcert/internal/testenv"
)

// testArches are the architectures the tests build and inspect: in make
// test the build machine's own (amd64: what make test installs builds it);
// under make test-packages (BOOTCERT_TEST_PACKAGES=1, which installs the
// cross compilers) also arm64 and armhf.
func testArches() []string {
	if os.Getenv("BOOTCERT_TEST_PACKAGES") == "1" {
		return []string{"amd64", "arm64", "armhf"}
	}
	return []string{"amd64"}
}

var rpmArches = map[string]string{"amd64": "x86_64", "arm64": "aarch64", "armhf": "armv7hl"}

const testVersion = "0.1.0"

// the files each package holds: path -> mode as dpkg-deb -c and rpm -qplv
// print it (owner root:root)
var wantFiles = map[string]map[string]string{gateway: gatewayFiles, admin: adminFiles}

func init() {
	// every package: its copyright file, and a man page per command and the
	// completions of each cobra tool (internal/gendocs)
	for name, pkg := range gendocs.Packages() {
		wantFiles[name]["/usr/share/doc/"+name+"/copyright"] = "-rw-r--r--"
		for i, tool := range pkg.Tools {
			for _, c := range commandPaths(tool.Root) {
				wantFiles[name]["/"+gendocs.ManDir+"/man"+tool.Section+"/"+strings.ReplaceAll(c, " ", "-")+"."+tool.Section+".gz"] = "-rw-r--r--"
			}
			if pkg.Completions[i] {
				n := tool.Root.Name()
				for _, f := range []string{gendocs.BashDir + "/" + n, gendocs.ZshDir + "/_" + n, gendocs.FishDir + "/" + n + ".fish"} {
					wantFiles[name]["/"+f] = "-rw-r--r--"
				}
			}
		}
	}
}

func commandPaths(c *cobra.Command) []string {
	out := []string{c.CommandPath()}
	for _, sub := range c.Commands() {
		if sub.IsAvailableCommand() && !sub.IsAdditionalHelpTopicCommand() {
			out = append(out, commandPaths(sub)...)
		}
	}
	return out
}

// the two packages make packages builds
const (
	gateway = "bootcert"       // bootcertd, bootcertctl
	admin   = "bootcert-admin" // the account tool (AWS SDK), never on a gateway
)

var adminFiles = map[string]string{
	"/usr/bin/bootcert-admin":                 "-rwxr-xr-x",
	"/usr/share/doc/bootcert-admin/README.md": "-rw-r--r--",
	"/usr/share/doc/bootcert-admin/cloud.md":  "-rw-r--r--",
}

var gatewayFiles = map[string]string{
	"/usr/bin/bootcertd":                        "-rwxr-xr-x",
	"/usr/bin/bootcertctl":                      "-rwxr-xr-x",
	"/usr/lib/systemd/system/bootcertd.service": "-rw-r--r--",
	"/usr/lib/sysusers.d/bootcert.conf":         "-rw-r--r--",
	"/usr/lib/tmpfiles.d/bootcert.conf":         "-rw-r--r--",
	"/etc/bootcert/bootcertd.toml":              "-rw-r--r--",
	"/usr/share/doc/bootcert/README.md":         "-rw-r--r--",
	"/usr/share/doc/bootcert/bootcertd.md":      "-rw-r--r--",
	"/usr/share/doc/bootcert/protocol.md":       "-rw-r--r--", // bootcertd.md links to it
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	buildOut  []byte
)

// packages builds the packages once per test binary with `make packages`
// (the Makefile's release flags) and returns the path of one of them: the
// package name's .deb or .rpm for arch.
func packages(t *testing.T, name, arch, ext string) string {
	t.Helper()
	testenv.Require(t, "make", "go", "readelf", "dpkg")
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "bootcert-packages-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("make", "-s", "--no-print-directory", "-C", "../..", "packages",
			"DIST="+buildDir, "VERSION="+testVersion, "ARCHES="+strings.Join(testArches(), " "))
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build.sh: %v\n%s", buildErr, buildOut)
	}
	if ext == "rpm" { // rpm's own file name convention and architecture names
		return filepath.Join(buildDir, name+"-"+testVersion+"-1."+rpmArches[arch]+".rpm")
	}
	return filepath.Join(buildDir, name+"_"+testVersion+"_"+arch+"."+ext)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.Bytes())
	}
	return string(out)
}

// glibcFloor is the newest GLIBC_x.y version the binaries need (their
// version-needs entries, what objdump -T shows per symbol).
func glibcFloor(t *testing.T, bins ...string) string {
	t.Helper()
	var floor string
	for _, b := range bins {
		f, err := elf.Open(b)
		if err != nil {
			t.Fatal(err)
		}
		syms, err := f.ImportedSymbols()
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		for _, s := range syms {
			if v, ok := strings.CutPrefix(s.Version, "GLIBC_"); ok && versionLess(floor, v) {
				floor = v
			}
		}
	}
	if floor == "" {
		t.Fatalf("%v: no GLIBC_ symbol versions (a cgo build links libc)", bins)
	}
	return floor
}

// versionLess compares dotted numeric versions ("" is the least).
func versionLess(a, b string) bool {
	if a == "" {
		return b != ""
	}
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			fmt.Sscan(as[i], &x)
		}
		if i < len(bs) {
			fmt.Sscan(bs[i], &y)
		}
		if x != y {
			return x < y
		}
	}
	return false
}

func TestVersionLess(t *testing.T) {
	for _, c := range []struct {
		a, b string
		less bool
	}{{"", "2.2.5", true}, {"2.3", "2.3.2", true}, {"2.3.2", "2.17", true}, {"2.17", "2.4", false}, {"2.4", "2.4", false}} {
		if got := versionLess(c.a, c.b); got != c.less {
			t.Errorf("versionLess(%q, %q) = %v", c.a, c.b, got)
		}
	}
}

func TestDeb(t *testing.T) {
	testenv.Require(t, "dpkg-deb")
	for _, arch := range testArches() {
		t.Run(arch, func(t *testing.T) {
			deb := packages(t, gateway, arch, "deb")
			field := func(f string) string { return strings.TrimSpace(run(t, "dpkg-deb", "-f", deb, f)) }
			for f, want := range map[string]string{"Package": "bootcert", "Version": testVersion + "-1", "Architecture": arch} {
				if got := field(f); got != want {
					t.Errorf("%s: %q, want %q", f, got, want)
				}
			}
			root := t.TempDir()
			run(t, "dpkg-deb", "-x", deb, root)
			floor := glibcFloor(t, filepath.Join(root, "usr/bin/bootcertd"), filepath.Join(root, "usr/bin/bootcertctl"))
			t.Logf("%s: the binaries need glibc >= %s", arch, floor)
			checkDeps(t, "Depends", strings.Split(field("Depends"), ", "),
				"libc6 (>= "+floor+")", "systemd-sysusers | systemd (>= 247)", "systemd-tmpfiles | systemd (>= 247)", "procps")
			checkCopyright(t, root, gateway)
			// mode owner/group size date time ./path
			checkFiles(t, gateway, run(t, "dpkg-deb", "-c", deb), 6, func(f []string) (string, string) {
				return strings.TrimPrefix(f[5], "."), f[1]
			})

			ctrl := t.TempDir()
			run(t, "dpkg-deb", "-e", deb, ctrl)
			if b, _ := os.ReadFile(filepath.Join(ctrl, "conffiles")); strings.TrimSpace(string(b)) != "/etc/bootcert/bootcertd.toml" {
				t.Errorf("conffiles %q, want /etc/bootcert/bootcertd.toml", b)
			}
			checkScripts(t, map[string]string{
				"postinstall.sh": readFile(t, filepath.Join(ctrl, "postinst")),
				"preremove.sh":   readFile(t, filepath.Join(ctrl, "prerm")),
				"postremove.sh":  readFile(t, filepath.Join(ctrl, "postrm")),
			})
			for _, s := range []string{"postinst", "prerm", "postrm"} {
				if fi, err := os.Stat(filepath.Join(ctrl, s)); err != nil || fi.Mode().Perm() != 0o755 {
					t.Errorf("%s: %v %v, want mode 0755", s, fi, err)
				}
			}

			checkBinaries(t, root, arch, "bootcertd", "bootcertctl")
		})
		t.Run(admin+"/"+arch, func(t *testing.T) {
			deb := packages(t, admin, arch, "deb")
			field := func(f string) string { return strings.TrimSpace(run(t, "dpkg-deb", "-f", deb, f)) }
			for f, want := range map[string]string{"Package": admin, "Version": testVersion + "-1", "Architecture": arch, "Section": "admin"} {
				if got := field(f); got != want {
					t.Errorf("%s: %q, want %q", f, got, want)
				}
			}
			root := t.TempDir()
			run(t, "dpkg-deb", "-x", deb, root)
			// the binary's libraries only: no systemd, no user, no bootcert
			floor := glibcFloor(t, filepath.Join(root, "usr/bin/bootcert-admin"))
			checkDeps(t, "Depends", nonEmpty(strings.Split(field("Depends"), ", ")), "libc6 (>= "+floor+")")
			checkCopyright(t, root, admin)
			checkFiles(t, admin, run(t, "dpkg-deb", "-c", deb), 6, func(f []string) (string, string) {
				return strings.TrimPrefix(f[5], "."), f[1]
			})
			ctrl := t.TempDir()
			run(t, "dpkg-deb", "-e", deb, ctrl)
			for _, s := range []string{"conffiles", "postinst", "prerm", "postrm", "preinst"} {
				if _, err := os.Stat(filepath.Join(ctrl, s)); err == nil {
					t.Errorf("the admin package has %s; it installs one binary and its docs", s)
				}
			}
			checkBinaries(t, root, arch, "bootcert-admin")
		})
	}
}

func nonEmpty(ss []string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

func TestRPM(t *testing.T) {
	testenv.Require(t, "rpm")
	for _, arch := range testArches() {
		rpmArch := rpmArches[arch]
		bits := "(64bit)"
		if arch == "armhf" {
			bits = ""
		}
		t.Run(arch, func(t *testing.T) {
			rpm := packages(t, gateway, arch, "rpm")
			info := run(t, "rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}", rpm)
			if want := "bootcert " + testVersion + " 1 " + rpmArch; info != want {
				t.Errorf("rpm %q, want %q", info, want)
			}
			if got := run(t, "rpm", "-qp", "--qf", "%{LICENSE}", rpm); got != "Apache-2.0" {
				t.Errorf("rpm License: %q, want Apache-2.0", got)
			}
			floor := glibcFloor(t, rpmBinaries(t, rpm, "bootcertd", "bootcertctl")...)
			checkDeps(t, "Requires", strings.Split(strings.TrimSpace(run(t, "rpm", "-qpR", rpm)), "\n"),
				"libc.so.6(GLIBC_"+floor+")"+bits, "libdl.so.2()"+bits, "libpthread.so.0()"+bits, "libresolv.so.2()"+bits,
				"/usr/bin/systemd-sysusers", "/usr/bin/systemd-tmpfiles", "/usr/bin/kill")
			// mode links owner group size month day time path
			checkFiles(t, gateway, run(t, "rpm", "-qplv", rpm), 9, func(f []string) (string, string) {
				return f[8], f[2] + "/" + f[3]
			})

			// %config(noreplace): flags c (config) and n (noreplace)
			flags := run(t, "rpm", "-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", rpm)
			if !regexp.MustCompile(`(?m)^cn /etc/bootcert/bootcertd.toml$`).MatchString(flags) {
				t.Errorf("bootcertd.toml is not %%config(noreplace):\n%s", flags)
			}
			scripts := map[string]string{}
			for _, s := range []struct{ tag, file string }{{"POSTIN", "postinstall.sh"}, {"PREUN", "preremove.sh"}, {"POSTUN", "postremove.sh"}} {
				scripts[s.file] = run(t, "rpm", "-qp", "--qf", "%{"+s.tag+"}", rpm) + "\n"
			}
			checkScripts(t, scripts)
		})
		t.Run(admin+"/"+arch, func(t *testing.T) {
			rpm := packages(t, admin, arch, "rpm")
			info := run(t, "rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}", rpm)
			if want := admin + " " + testVersion + " 1 " + rpmArch; info != want {
				t.Errorf("rpm %q, want %q", info, want)
			}
			var reqs []string
			for _, r := range strings.Split(strings.TrimSpace(run(t, "rpm", "-qpR", rpm)), "\n") {
				if !strings.HasPrefix(r, "rpmlib(") { // rpm's own feature requirements
					reqs = append(reqs, r)
				}
			}
			floor := glibcFloor(t, rpmBinaries(t, rpm, "bootcert-admin")...)
			checkDeps(t, "Requires", nonEmpty(reqs),
				"libc.so.6(GLIBC_"+floor+")"+bits, "libdl.so.2()"+bits, "libpthread.so.0()"+bits, "libresolv.so.2()"+bits)
			checkFiles(t, admin, run(t, "rpm", "-qplv", rpm), 9, func(f []string) (string, string) {
				return f[8], f[2] + "/" + f[3]
			})
			if sc := run(t, "rpm", "-qp", "--scripts", rpm); strings.TrimSpace(sc) != "" {
				t.Errorf("the admin package has scriptlets:\n%s", sc)
			}
		})
	}
}

// TestInstalledCheckConfig unpacks the build machine's .deb and runs the
// installed bootcertd on the shipped default configuration: it is a valid
// configuration whose factory files are not there yet, so the check must
// fail naming the first missing file, never pass.
func TestInstalledCheckConfig(t *testing.T) {
	testenv.Require(t, "dpkg-deb")
	deb := packages(t, gateway, runtime.GOARCH, "deb")
	root := t.TempDir()
	run(t, "dpkg-deb", "-x", deb, root)
	cmd := exec.Command(filepath.Join(root, "usr/bin/bootcertd"), "--check-config", filepath.Join(root, "etc/bootcert/bootcertd.toml"))
	out, err := cmd.CombinedOutput()
	if _, ok := err.(*exec.ExitError); !ok {
		t.Fatalf("bootcertd --check-config on the shipped config: %v (want exit 1)\n%s", err, out)
	}
	if want := "/etc/bootcert/AmazonRootCA1.pem: no such file or directory"; !strings.Contains(string(out), want) {
		t.Errorf("bootcertd --check-config: %q, want the missing root CA named (%q)", out, want)
	}
	t.Logf("shipped config, as expected before the factory files exist: %s", bytes.TrimSpace(out))

	// the unit runs what the package installs, with the config it ships
	unit := readFile(t, filepath.Join(root, "usr/lib/systemd/system/bootcertd.service"))
	for _, want := range []string{
		"ExecStartPre=/usr/bin/bootcertd --check-config /etc/bootcert/bootcertd.toml --failure-state /var/lib/bootcert\n",
		"ExecStart=/usr/bin/bootcertd --config /etc/bootcert/bootcertd.toml\n",
		"Documentation=file:///usr/share/doc/bootcert/README.md\n",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	if out, err := exec.Command(filepath.Join(root, "usr/bin/bootcertctl"), "--help").CombinedOutput(); err != nil {
		t.Errorf("installed bootcertctl --help: %v\n%s", err, out)
	}
	// both binaries say which package version they are
	for bin, want := range map[string]string{"bootcertd": "bootcertd " + testVersion + "\n", "bootcertctl": "bootcertctl " + testVersion + "\n"} {
		out, err := exec.Command(filepath.Join(root, "usr/bin", bin), "--version").CombinedOutput()
		if err != nil || string(out) != want {
			t.Errorf("installed %s --version: %q (%v), want %q", bin, out, err, want)
		}
	}
}

// TestGatewayShipsNoAWSSDK reads the Go build information of every binary
// in both packages: the gateway's (bootcertd, bootcertctl) link no module
// of the AWS SDK; the account tool does, and is what the gateway's
// bootcertctl sends `cloud setup` to.
func TestGatewayShipsNoAWSSDK(t *testing.T) {
	testenv.Require(t, "dpkg-deb")
	roots := map[string]string{}
	for _, pkg := range []string{gateway, admin} {
		roots[pkg] = t.TempDir()
		run(t, "dpkg-deb", "-x", packages(t, pkg, runtime.GOARCH, "deb"), roots[pkg])
	}
	awsModules := func(bin string) []string {
		bi, err := buildinfo.ReadFile(bin)
		if err != nil {
			t.Fatalf("%s: %v", bin, err)
		}
		var aws []string
		for _, d := range bi.Deps {
			if strings.HasPrefix(d.Path, "github.com/aws/") {
				aws = append(aws, d.Path)
			}
		}
		return aws
	}
	for _, b := range []string{"bootcertd", "bootcertctl"} {
		if m := awsModules(filepath.Join(roots[gateway], "usr/bin", b)); len(m) > 0 {
			t.Errorf("the gateway's %s links %v", b, m)
		}
	}
	if m := awsModules(filepath.Join(roots[admin], "usr/bin/bootcert-admin")); !slices.Contains(m, "github.com/aws/aws-sdk-go-v2/service/iot") {
		t.Errorf("bootcert-admin links %v, want the AWS SDK's IoT client among them", m)
	}

	out, err := exec.Command(filepath.Join(roots[gateway], "usr/bin/bootcertctl"), "cloud", "setup", "--bucket", "b").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `moved to "bootcert-admin cloud setup"`) {
		t.Errorf("installed bootcertctl cloud setup: %v\n%s\nwant it to point at bootcert-admin", err, out)
	}
	adminBin := filepath.Join(roots[admin], "usr/bin/bootcert-admin")
	if out, err := exec.Command(adminBin, "--version").CombinedOutput(); err != nil || string(out) != "bootcert-admin "+testVersion+"\n" {
		t.Errorf("installed bootcert-admin --version: %q (%v)", out, err)
	}
	if out, err := exec.Command(adminBin, "cloud", "setup", "--help").CombinedOutput(); err != nil || !strings.Contains(string(out), "--ca-cert") {
		t.Errorf("installed bootcert-admin cloud setup --help: %v\n%s", err, out)
	}
}

// checkDeps compares a package's dependencies with the wanted ones, in
// order: the shared libraries (libc with the glibc floor), then the others.
func checkDeps(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s %q, want %q", what, got, want)
	}
}

// rpmBinaries unpacks an rpm (rpm2cpio | cpio, or rpm2archive) and returns
// the paths of the named /usr/bin binaries.
func rpmBinaries(t *testing.T, rpm string, bins ...string) []string {
	t.Helper()
	testenv.Require(t, "rpm2cpio", "cpio")
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", `rpm2cpio "$1" | cpio -idm --quiet --no-absolute-filenames`, "sh", rpm)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("unpacking %s: %v\n%s", rpm, err, out)
	}
	var paths []string
	for _, b := range bins {
		paths = append(paths, filepath.Join(dir, "usr/bin", b))
	}
	return paths
}

// checkCopyright checks /usr/share/doc/<pkg>/copyright: Debian's
// machine-readable format, License: Apache-2.0, and LICENSE's full text.
func checkCopyright(t *testing.T, root, pkg string) {
	t.Helper()
	c := readFile(t, filepath.Join(root, "usr/share/doc", pkg, "copyright"))
	for _, want := range []string{
		"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n",
		"Upstream-Name: " + pkg + "\n",
		"Files: *\nCopyright: bootcert contributors\nLicense: Apache-2.0\n",
	} {
		if !strings.Contains(c, want) {
			t.Errorf("%s copyright lacks %q", pkg, want)
		}
	}
	_, text, ok := strings.Cut(c, "\nLicense: Apache-2.0\n\nLicense: Apache-2.0\n")
	if !ok {
		t.Fatalf("%s copyright has no stand-alone License: Apache-2.0 paragraph:\n%s", pkg, c)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		l = strings.TrimPrefix(l, " ")
		if l == "." {
			l = ""
		}
		lines = append(lines, l)
	}
	license := readFile(t, "../../LICENSE")
	if got := strings.Join(lines, "\n") + "\n"; strings.Join(strings.Fields(got), " ") != strings.Join(strings.Fields(license), " ") {
		t.Errorf("%s copyright: the license text differs from LICENSE", pkg)
	}
	if !strings.Contains(license, "Apache License\n                           Version 2.0, January 2004") {
		t.Errorf("LICENSE is not the Apache License 2.0")
	}
}

// checkFiles checks a package listing (dpkg-deb -c, rpm -qplv): exactly the
// wanted files with their modes, owned by root/root; directories aside.
// pathOwner picks the path and owner/group from a line's fields.
func checkFiles(t *testing.T, pkg, listing string, minFields int, pathOwner func(fields []string) (path, owner string)) {
	t.Helper()
	want := wantFiles[pkg]
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(listing), "\n") {
		f := strings.Fields(l)
		if len(f) < minFields || strings.HasPrefix(f[0], "d") {
			continue
		}
		path, owner := pathOwner(f)
		if owner != "root/root" {
			t.Errorf("%s owned by %s", path, owner)
		}
		got[path] = f[0]
	}
	for f, mode := range want {
		if got[f] != mode {
			t.Errorf("%s: mode %q, want %q", f, got[f], mode)
		}
	}
	for f := range got {
		if _, ok := want[f]; !ok {
			t.Errorf("unexpected file %s", f)
		}
	}
}

// checkScripts compares the package's maintainer scripts with
// packaging/scripts and parses each with sh -n.
func checkScripts(t *testing.T, got map[string]string) {
	t.Helper()
	for name, body := range got {
		src := readFile(t, filepath.Join("..", "scripts", name))
		if strings.TrimSpace(body) != strings.TrimSpace(src) {
			t.Errorf("packaged %s differs from packaging/scripts/%s:\n%s", name, name, body)
		}
		cmd := exec.Command("sh", "-n")
		cmd.Stdin = strings.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", name, err, out)
		}
	}
}

// checkBinaries checks the unpacked binaries' machine, that they are
// stripped and built with cgo (every architecture: Debian's cross compilers).
func checkBinaries(t *testing.T, root, arch string, bins ...string) {
	t.Helper()
	machine := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "armhf": elf.EM_ARM}[arch]
	for _, b := range bins {
		f, err := elf.Open(filepath.Join(root, "usr/bin", b))
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		libs, _ := f.ImportedLibraries()
		if f.Machine != machine {
			t.Errorf("%s: machine %v, want %v", b, f.Machine, machine)
		}
		if f.Section(".symtab") != nil {
			t.Errorf("%s: not stripped (has .symtab)", b)
		}
		if !slices.Contains(libs, "libc.so.6") {
			t.Errorf("%s: links %q; want the cgo build (libc.so.6: PKCS#11 dlopens its module)", b, libs)
		}
		f.Close()
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestSign signs the amd64 packages with a throwaway key (a temporary
// GNUPGHOME) by sign.sh: rpm -K passes with the public key imported, fails
// without it and on a changed package; the apt repository's InRelease and
// Release.gpg verify with the exported keyring, not after a change, and
// Release lists the Packages index apt will fetch by its SHA256.
func TestSign(t *testing.T) {
	testenv.Require(t, "gpg", "gpgv", "gpgconf", "rpm", "rpmsign", "apt-ftparchive")
	dist := t.TempDir()
	for _, p := range []string{packages(t, gateway, "amd64", "deb"), packages(t, gateway, "amd64", "rpm")} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dist, filepath.Base(p)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	home := newSigningKey(t)
	env := append(os.Environ(), "GNUPGHOME="+home, "BOOTCERT_SIGN_KEY="+signingKeyEmail)
	cmd := exec.Command("./sign.sh", dist)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sign.sh: %v\n%s", err, out)
	}
	rpm := filepath.Join(dist, filepath.Base(packages(t, gateway, "amd64", "rpm")))
	rpmK := func(db string, pkg string) (string, error) {
		out, err := exec.Command("rpm", "--dbpath", db, "-K", pkg).CombinedOutput()
		return string(out), err
	}
	if out, err := rpmK(t.TempDir(), rpm); err == nil || !strings.Contains(out, "SIGNATURES NOT OK") {
		t.Errorf("rpm -K without the key: %v %s, want SIGNATURES NOT OK", err, out)
	}
	db := t.TempDir()
	run(t, "rpm", "--dbpath", db, "--import", filepath.Join(dist, "RPM-GPG-KEY-bootcert"))
	if out, err := rpmK(db, rpm); err != nil || !strings.Contains(out, "digests signatures OK") {
		t.Errorf("rpm -K with the key imported: %v %s", err, out)
	}
	b, _ := os.ReadFile(rpm)
	b[len(b)-100] ^= 0xff // in the payload
	tampered := filepath.Join(t.TempDir(), "tampered.rpm")
	os.WriteFile(tampered, b, 0o644)
	if out, err := rpmK(db, tampered); err == nil {
		t.Errorf("rpm -K passed a changed package: %s", out)
	}

	apt := filepath.Join(dist, "apt")
	keyring := filepath.Join(apt, "bootcert-archive-keyring.gpg")
	rel := filepath.Join(apt, "dists/stable")
	if out, err := exec.Command("gpgv", "--keyring", keyring, filepath.Join(rel, "InRelease")).CombinedOutput(); err != nil {
		t.Errorf("gpgv InRelease: %v\n%s", err, out)
	}
	if out, err := exec.Command("gpgv", "--keyring", keyring, filepath.Join(rel, "Release.gpg"), filepath.Join(rel, "Release")).CombinedOutput(); err != nil {
		t.Errorf("gpgv Release.gpg Release: %v\n%s", err, out)
	}
	release := readFile(t, filepath.Join(rel, "Release"))
	pkgs, err := os.ReadFile(filepath.Join(rel, "main/binary-amd64/Packages"))
	if err != nil {
		t.Fatal(err)
	}
	if sum := fmt.Sprintf("%x", sha256.Sum256(pkgs)); !regexp.MustCompile(`(?m)^ ` + sum + ` +\d+ main/binary-amd64/Packages$`).MatchString(release) {
		t.Errorf("Release does not list main/binary-amd64/Packages by its SHA256 %s:\n%s", sum, release)
	}
	if !strings.Contains(string(pkgs), "Filename: pool/main/bootcert_"+testVersion+"_amd64.deb\n") {
		t.Errorf("Packages lacks the .deb:\n%s", pkgs)
	}
	changed := filepath.Join(t.TempDir(), "Release")
	os.WriteFile(changed, []byte(strings.Replace(release, "Suite: stable", "Suite: stabIe", 1)), 0o644)
	if out, err := exec.Command("gpgv", "--keyring", keyring, filepath.Join(rel, "Release.gpg"), changed).CombinedOutput(); err == nil {
		t.Errorf("gpgv verified a changed Release:\n%s", out)
	}
	other := newSigningKey(t)
	otherRing := filepath.Join(t.TempDir(), "other.gpg")
	cmd = exec.Command("gpg", "--batch", "--export", "-o", otherRing, signingKeyEmail)
	cmd.Env = append(os.Environ(), "GNUPGHOME="+other)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("exporting the other key: %v\n%s", err, out)
	}
	if out, err := exec.Command("gpgv", "--keyring", otherRing, filepath.Join(rel, "InRelease")).CombinedOutput(); err == nil {
		t.Errorf("InRelease verified with another key:\n%s", out)
	}
}

// TestSignPassphrase signs with a passphrase-protected key, the passphrase
// read from BOOTCERT_SIGN_PASSPHRASE_FILE (gpg's loopback pinentry, for
// rpmsign too); without the file, signing fails instead of hanging on a
// pinentry.
func TestSignPassphrase(t *testing.T) {
	testenv.Require(t, "gpg", "gpgconf", "rpm", "rpmsign", "apt-ftparchive")
	dist := t.TempDir()
	src := packages(t, gateway, "amd64", "rpm")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	rpm := filepath.Join(dist, filepath.Base(src))
	os.WriteFile(rpm, b, 0o644)
	home := newSigningKeyWith(t, "correct horse")
	pass := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(pass, []byte("correct horse\n"), 0o600)
	sign := func(extra ...string) ([]byte, error) {
		cmd := exec.Command("./sign.sh", dist)
		cmd.Env = append(append(os.Environ(), "GNUPGHOME="+home, "BOOTCERT_SIGN_KEY="+signingKeyEmail), extra...)
		cmd.Stdin = nil
		done := make(chan struct{})
		var out []byte
		var err error
		go func() { out, err = cmd.CombinedOutput(); close(done) }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Fatalf("sign.sh hung (waiting for a passphrase?)\n%s", out)
		}
		return out, err
	}
	if out, err := sign(); err == nil {
		t.Errorf("sign.sh signed with a protected key and no passphrase:\n%s", out)
	}
	if out, err := sign("BOOTCERT_SIGN_PASSPHRASE_FILE=" + pass); err != nil {
		t.Fatalf("sign.sh with the passphrase file: %v\n%s", err, out)
	} else if strings.Contains(string(out), "correct horse") {
		t.Errorf("sign.sh printed the passphrase:\n%s", out)
	}
	db := t.TempDir()
	run(t, "rpm", "--dbpath", db, "--import", filepath.Join(dist, "RPM-GPG-KEY-bootcert"))
	if out, err := exec.Command("rpm", "--dbpath", db, "-K", rpm).CombinedOutput(); err != nil || !strings.Contains(string(out), "digests signatures OK") {
		t.Errorf("rpm -K after signing with the protected key: %v %s", err, out)
	}
}

// signingKeyEmail names the throwaway release key newSigningKey makes.
const signingKeyEmail = "release-test@bootcert.invalid"

// newSigningKey makes a throwaway RSA signing key without passphrase in a
// new GNUPGHOME and returns the directory; the gpg-agent it starts is
// stopped at the end of the test.
func newSigningKey(t *testing.T) string {
	t.Helper()
	return newSigningKeyWith(t, "")
}

// newSigningKeyWith is newSigningKey with a passphrase ("" for none).
func newSigningKeyWith(t *testing.T, passphrase string) string {
	t.Helper()
	home, err := os.MkdirTemp("", "gpg-") // short: gpg-agent's socket path has a length limit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd := exec.Command("gpgconf", "--kill", "all")
		cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
		cmd.Run()
		os.RemoveAll(home)
	})
	os.Chmod(home, 0o700)
	cmd := exec.Command("gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", passphrase, "--quick-gen-key", "bootcert release test <"+signingKeyEmail+">", "rsa3072", "sign", "never")
	cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gpg --quick-gen-key: %v\n%s", err, out)
	}
	return home
}
