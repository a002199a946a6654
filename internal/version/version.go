// Package version tells which build of bootcert is running.
package version

import "runtime/debug"

// Version is set at link time by release builds
// (-ldflags "-X github.com/bootcert/bootcert/internal/version.Version=1.2.3");
// see packaging/release/build.sh.
var Version string

// String is Version, else what the Go toolchain recorded about the build
// (module version, or the VCS revision of a build from a checkout), else
// "devel".
func String() string {
	if Version != "" {
		return Version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	return fromBuildInfo(bi)
}

func fromBuildInfo(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	return "devel-" + rev + dirty
}
