package clock

import (
	"runtime/debug"
	"sync"
	"time"
)

// FloorDate is the earliest wall time bootcert believes, compiled in: a
// little before this code was written. A clock before it is unset (a
// gateway without a real-time clock boots in 1970; a dead RTC battery
// often resets to 2000) or not synchronised yet (systemd sets an unset
// clock to its own build time at boot).
var FloorDate = time.Date(2026, time.November, 1, 0, 0, 0, 0, time.UTC)

var (
	floorOnce sync.Once
	floor     time.Time
)

// Floor is the later of FloorDate and the commit time the Go toolchain
// recorded in the binary (vcs.time, present in a build from a checkout):
// no clock that runs this binary can truly be before the commit it was
// built from, so each release raises the floor by itself.
func Floor() time.Time {
	floorOnce.Do(func() {
		floor = FloorDate
		bi, ok := debug.ReadBuildInfo()
		if !ok {
			return
		}
		floor = floorFrom(bi, FloorDate)
	})
	return floor
}

func floorFrom(bi *debug.BuildInfo, min time.Time) time.Time {
	for _, s := range bi.Settings {
		if s.Key != "vcs.time" {
			continue
		}
		if t, err := time.Parse(time.RFC3339, s.Value); err == nil && t.After(min) {
			return t
		}
	}
	return min
}
