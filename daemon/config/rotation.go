package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Rotation bounds a rotation job on the device and sets the device-side
// safety net (issue 10): when the operational certificate has used
// RequestAfterLife of its validity, or is older than MaxAge, and no rotation
// job has come, bootcertd asks the cloud for one (protocol.RotateRequest on
// certificates/{thing}/rotate), at most one request at a time, again after
// RequestInterval (doubling up to a day) while no job comes.
type Rotation struct {
	// PhaseSessions is how many MQTT sessions a rotation may start in one
	// phase before it is failed (its staged key destroyed, the credentials
	// unchanged).
	PhaseSessions int `toml:"phase_sessions" json:"phase_sessions"`
	// RequestAfterLife is the share of the certificate's validity
	// (notBefore to notAfter) after which the device asks; 0 never.
	RequestAfterLife float64 `toml:"request_after_life" json:"request_after_life"`
	// MaxAge is the age after which the device asks; 0 never.
	MaxAge Age `toml:"max_age" json:"max_age"`
	// RequestInterval is the first wait before asking again.
	RequestInterval Duration `toml:"request_interval" json:"request_interval"`
}

// DefaultRotation: 5 sessions per phase; ask at 80% of the validity (after
// the cloud's own renewal at two thirds, so a healthy fleet never asks); no
// age limit (set it a little above the cloud's MaxCertificateAge, e.g.
// "400d" for 365 days: AWS-issued certificates are valid until 2049, so only
// the age makes them rotate); ask again after 1h, 2h, ... up to 24h.
func DefaultRotation() Rotation {
	return Rotation{PhaseSessions: 5, RequestAfterLife: 0.8, RequestInterval: Duration(time.Hour)}
}

// Age is a duration that may be written in days: "365d", "8760h", "0".
type Age time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (a *Age) UnmarshalText(b []byte) error {
	s := string(b)
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(d, 10, 16)
		if err != nil {
			return fmt.Errorf("%q is not a number of days (write e.g. \"365d\")", s)
		}
		*a = Age(time.Duration(n) * 24 * time.Hour)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not an age (write e.g. \"400d\", \"9600h\", or \"0\" for none)", s)
	}
	*a = Age(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler: whole days as "Nd".
func (a Age) MarshalText() ([]byte, error) {
	d := time.Duration(a)
	if d > 0 && d%(24*time.Hour) == 0 {
		return []byte(strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"), nil
	}
	return []byte(d.String()), nil
}

// D returns the time.Duration.
func (a Age) D() time.Duration { return time.Duration(a) }

func (c *Config) validateRotation() error {
	bad := func(key, format string, args ...any) error {
		return &Error{File: c.Path, Key: key, Reason: fmt.Sprintf(format, args...)}
	}
	r := c.Rotation
	if r.PhaseSessions < 1 || r.PhaseSessions > 100 {
		return bad("rotation.phase_sessions", "%d is out of range [1, 100]", r.PhaseSessions)
	}
	if f := r.RequestAfterLife; f != 0 && (f < 0.5 || f > 0.99) {
		return bad("rotation.request_after_life", "%g is out of range [0.5, 0.99] (0: never ask because of the validity)", f)
	}
	if a := r.MaxAge.D(); a != 0 && (a < 24*time.Hour || a > 100*365*24*time.Hour) {
		return bad("rotation.max_age", "%s is out of range [1d, 36500d] (0: no age limit)", a)
	}
	if d := r.RequestInterval.D(); d < time.Minute || d > 7*24*time.Hour {
		return bad("rotation.request_interval", "%s is out of range [1m, 168h]", d)
	}
	if d := c.Backoff.ResetAfter.D(); d < time.Second || d > time.Hour {
		return bad("backoff.reset_after", "%s is out of range [1s, 1h]", d)
	}
	return nil
}
