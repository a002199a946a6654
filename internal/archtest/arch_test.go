package archtest

import (
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/internal/testkit"
)

const module = "github.com/bootcert/bootcert"

// releaseBuild is one way the shipped binaries are built: with cgo and the
// Makefile's RELEASE_FLAGS tag, as packaging/release/build.sh (make
// packages) builds every architecture, and the static CGO_ENABLED=0 build
// of another architecture (a build without a C cross compiler).
type releaseBuild struct {
	name string
	env  []string
}

var releaseBuilds = []releaseBuild{
	{"cgo-" + runtime.GOARCH, []string{"CGO_ENABLED=1", "GOOS=linux", "GOARCH=" + runtime.GOARCH}},
	{"static-" + otherArch(), []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + otherArch()}},
}

// releaseTags are the Makefile's RELEASE_FLAGS build tags.
const releaseTags = "nosimulator"

func otherArch() string {
	if runtime.GOARCH == "arm64" {
		return "amd64"
	}
	return "arm64"
}

// Forbidden import path prefixes (a prefix matches itself and what is below).
var (
	cloudCode = module + "/cloud"
	awsSDK    = "github.com/aws" // aws-sdk-go-v2, smithy-go, aws-lambda-go
	mochi     = "github.com/mochi-mqtt"
	cobra     = "github.com/spf13/cobra"
	simulator = "github.com/google/go-tpm-tools/simulator"
	lab       = module + "/cloud/lab"
	// prometheus is a test-only dependency (daemon/metrics parses its own
	// textfile with expfmt); the daemon writes the text format by hand
	prometheus = "github.com/prometheus"
	// the daemon's TOML decoder is daemon/config's own (0.14 MiB smaller)
	burntToml = "github.com/BurntSushi/toml"
)

// checkLinks fails the test for every package pkg links under the release
// builds that starts with a forbidden prefix.
func checkLinks(t *testing.T, pkg string, forbidden ...string) {
	for _, b := range releaseBuilds {
		t.Run(b.name, func(t *testing.T) {
			deps := testkit.Deps(t, pkg, releaseTags, b.env...)
			// an empty or wrong listing would pass vacuously
			if !deps[pkg] || !deps[module+"/keystore"] {
				t.Fatalf("go list -deps %s lists neither itself nor the keystore: %d packages", pkg, len(deps))
			}
			for _, f := range forbidden {
				bad := testkit.ForbiddenDeps(deps, f)
				if len(bad) == 0 {
					continue
				}
				slices.Sort(bad)
				more := ""
				if len(bad) > 3 {
					bad, more = bad[:3], fmt.Sprintf(" and %d more", len(bad)-3)
				}
				t.Errorf("%s (%s, tags %s) links %s: %s%s", pkg, strings.Join(b.env, " "), releaseTags, f, strings.Join(bad, ", "), more)
			}
		})
	}
}

func TestDaemonReleaseLinks(t *testing.T) {
	checkLinks(t, module+"/cmd/bootcertd", cloudCode, awsSDK, mochi, cobra, simulator, prometheus, burntToml)
}

func TestGatewayCtlLinksNoCloud(t *testing.T) {
	checkLinks(t, module+"/cmd/bootcertctl", cloudCode, awsSDK, mochi, simulator, prometheus)
}

// The checks above see a forbidden dependency where there is one:
// bootcert-admin is the tool that links the AWS SDK and cloud/setup.
func TestAdminLinksTheSDK(t *testing.T) {
	deps := testkit.Deps(t, module+"/cmd/bootcert-admin", releaseTags, releaseBuilds[0].env...)
	for _, want := range []string{awsSDK, module + "/cloud/setup"} {
		if len(testkit.ForbiddenDeps(deps, want)) == 0 {
			t.Errorf("bootcert-admin does not link %s: has cloud setup moved again? (then move this check with it)", want)
		}
	}
	if bad := testkit.ForbiddenDeps(deps, lab, mochi); len(bad) > 0 {
		t.Errorf("bootcert-admin links %v", bad)
	}
}

// labImportersAllowed are the packages (prefixes) whose non-test code may
// import the lab.
var labImportersAllowed = []string{
	lab, // the lab's own packages
	module + "/cmd/bootcert-lab",
	module + "/internal/demo",
	module + "/bench",
}

// labImporters returns "importer -> imported" for every package of a
// `go list -f '{{.ImportPath}} {{join .Imports " "}}'` listing that imports
// the lab without being allowed to.
func labImporters(listing string) []string {
	var bad []string
	for _, line := range strings.Split(listing, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || len(testkit.ForbiddenDeps(map[string]bool{f[0]: true}, labImportersAllowed...)) > 0 {
			continue
		}
		for _, imp := range f[1:] {
			if imp == lab || strings.HasPrefix(imp, lab+"/") {
				bad = append(bad, f[0]+" -> "+imp)
			}
		}
	}
	return bad
}

func TestOnlyLabMainDemoBenchImportLab(t *testing.T) {
	// .Imports: the non-test imports (tests may use the lab freely)
	listing := testkit.Go(t, nil, "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./...")
	if !strings.Contains("\n"+listing, "\n"+module+"/cmd/bootcert-lab ") {
		t.Fatalf("go list ./... does not list cmd/bootcert-lab:\n%.500s", listing)
	}
	for _, b := range labImporters(listing) {
		t.Errorf("%s: only cmd/bootcert-lab, internal/demo, bench and tests may import the lab", b)
	}
}

func TestLabImportersDetects(t *testing.T) {
	listing := module + "/daemon/engine context " + lab + "/broker\n" +
		module + "/cloud/setup " + lab + "\n" +
		module + "/cloud/labels " + module + "/cloud/laboratory\n" + // prefixes end at a slash
		module + "/cmd/bootcert-lab " + lab + "\n" +
		module + "/internal/demo " + lab + "/api\n" +
		module + "/bench/fleet " + lab + "\n" +
		lab + "/api " + lab + "/registry\n"
	got := labImporters(listing)
	want := []string{module + "/daemon/engine -> " + lab + "/broker", module + "/cloud/setup -> " + lab}
	if !slices.Equal(got, want) {
		t.Fatalf("labImporters:\n got %q\nwant %q", got, want)
	}
}

// httpClientSymbols are what linking net/http's client brings into a
// binary: the Transport (connection pool, proxy, HTTP/2) and the Client.
// bootcertd downloads a location with one GET over crypto/tls
// (daemon/fetch.go) and must not link them again: they were 0.5 MiB of its
// binary (docs/bootcertd.md, Footprint). paho links net/http for its
// websocket transport, so an import rule cannot say this; the linked
// symbols can.
var httpClientSymbols = []string{"net/http.(*Transport).RoundTrip", "net/http.(*Client).Do", "net/http.(*http2Transport)"}

// linkedSymbols returns the lines of a `go tool nm` listing that name one
// of the symbols (a prefix of the symbol name).
func linkedSymbols(nm string, symbols []string) []string {
	var bad []string
	for _, line := range strings.Split(nm, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		name := strings.Join(f[2:], " ")
		for _, s := range symbols {
			if strings.HasPrefix(name, s) {
				bad = append(bad, name)
				break
			}
		}
	}
	return bad
}

func TestDaemonLinksNoHTTPClient(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "bootcertd")
	testkit.Go(t, releaseBuilds[0].env, "build", "-tags", releaseTags, "-o", bin, module+"/cmd/bootcertd")
	nm := testkit.Go(t, nil, "tool", "nm", bin)
	if len(linkedSymbols(nm, []string{"net/http.ReadResponse", "crypto/tls.Client"})) < 2 {
		t.Fatalf("go tool nm lists neither net/http.ReadResponse nor crypto/tls.Client: not bootcertd's symbol table?")
	}
	if bad := linkedSymbols(nm, httpClientSymbols); len(bad) > 0 {
		if len(bad) > 5 {
			bad = bad[:5]
		}
		t.Errorf("bootcertd (release build) links net/http's client again: %s (use a GET over crypto/tls, as daemon/fetch.go does)", strings.Join(bad, ", "))
	}
}

func TestLinkedSymbolsDetects(t *testing.T) {
	nm := "  65e920 T net/http.(*Transport).RoundTrip\n  65fbe0 T net/http.ReadResponse\n  664c40 t net/http.(*http2Transport).RoundTrip\n"
	got := linkedSymbols(nm, httpClientSymbols)
	want := []string{"net/http.(*Transport).RoundTrip", "net/http.(*http2Transport).RoundTrip"}
	if !slices.Equal(got, want) {
		t.Fatalf("linkedSymbols: got %q, want %q", got, want)
	}
}
