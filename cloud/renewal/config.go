package renewal

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Environment variables of the renewal function (the template's
// parameters; see docs/cloud.md "Rotation triggers").
const (
	EnvMaxCertificateAge   = "MAX_CERTIFICATE_AGE"
	EnvRotationsPerHour    = "ROTATIONS_PER_HOUR"
	EnvRotationBurst       = "ROTATION_BURST"
	EnvJobTimeout          = "JOB_IN_PROGRESS_TIMEOUT"
	EnvJobRolloutPerMinute = "JOB_ROLLOUT_PER_MINUTE"
	EnvJobAbortPercent     = "JOB_ABORT_THRESHOLD_PERCENT"
	EnvJobAbortMinExecuted = "JOB_ABORT_MIN_EXECUTED"
	EnvRequestInterval     = "ROTATE_REQUEST_INTERVAL"
)

// Config is what the renewal function adds to fleet.Settings.
type Config struct {
	// MaxAge is the largest age of an operational certificate: a thing is
	// due from MaxAge*(1-AgeLead-RenewalJitter*j) where j in [0,1) is a
	// stable per-thing number, so it is never older than MaxAge as long as
	// a rotation completes within MaxAge*AgeLead.
	MaxAge time.Duration
	// RotationsPerHour is the fleet-wide pace: at most Burst + RotationsPerHour*h
	// rotations are queued in any h hours (a token bucket, state in S3).
	RotationsPerHour float64
	Burst            int
	// Job settings of every rotation job the function creates.
	JobTimeout          time.Duration
	JobRolloutPerMinute int
	JobAbortPercent     float64
	JobAbortMinExecuted int
	// RequestInterval is how often one device may have a rotate request
	// accepted when its certificate is not yet due.
	RequestInterval time.Duration
}

// AgeLead is the share of MaxAge before it at which a thing is due at the
// latest (with no jitter).
const AgeLead = 0.05

// WaveSize is the most things one rotation job targets (the lab's and
// AssociateTargetsWithJob's 100 targets per job,
// https://docs.aws.amazon.com/iot/latest/apireference/API_AssociateTargetsWithJob.html).
const WaveSize = 100

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("invalid renewal setting")

// DefaultConfig is the template's defaults.
func DefaultConfig() Config {
	return Config{MaxAge: 365 * 24 * time.Hour, RotationsPerHour: 3600, Burst: 300,
		JobTimeout: time.Hour, JobRolloutPerMinute: 100, JobAbortPercent: 50, JobAbortMinExecuted: 20,
		RequestInterval: 24 * time.Hour}
}

// ConfigFromEnv reads the Config; unset variables take DefaultConfig's
// values. A bad value is an error naming the variable.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	c := DefaultConfig()
	burstSet := false
	for _, v := range []struct {
		name string
		set  func(string) error
	}{
		{EnvMaxCertificateAge, func(s string) (err error) {
			c.MaxAge, err = ParseDays(s)
			if err == nil && c.MaxAge < time.Hour {
				err = errors.New("below 1h")
			}
			return err
		}},
		{EnvRotationsPerHour, func(s string) (err error) {
			c.RotationsPerHour, err = strconv.ParseFloat(s, 64)
			if err == nil && !(c.RotationsPerHour > 0) {
				err = errors.New("not above 0")
			}
			return err
		}},
		{EnvRotationBurst, func(s string) (err error) {
			c.Burst, err = strconv.Atoi(s)
			if err == nil && c.Burst < 1 {
				err = errors.New("below 1")
			}
			burstSet = true
			return err
		}},
		{EnvJobTimeout, func(s string) (err error) {
			c.JobTimeout, err = ParseDays(s)
			if err == nil && (c.JobTimeout < time.Minute || c.JobTimeout > 7*24*time.Hour) {
				err = errors.New("not between 1m and 7d (TimeoutConfig.inProgressTimeoutInMinutes 1 to 10080)")
			}
			return err
		}},
		{EnvJobRolloutPerMinute, func(s string) (err error) {
			c.JobRolloutPerMinute, err = strconv.Atoi(s)
			if err == nil && (c.JobRolloutPerMinute < 1 || c.JobRolloutPerMinute > 1000) {
				err = errors.New("not 1 to 1000 (JobExecutionsRolloutConfig.maximumPerMinute)")
			}
			return err
		}},
		{EnvJobAbortPercent, func(s string) (err error) {
			c.JobAbortPercent, err = strconv.ParseFloat(s, 64)
			if err == nil && (c.JobAbortPercent < 0 || c.JobAbortPercent > 100) {
				err = errors.New("not 0 (no abort) to 100")
			}
			return err
		}},
		{EnvJobAbortMinExecuted, func(s string) (err error) {
			c.JobAbortMinExecuted, err = strconv.Atoi(s)
			if err == nil && c.JobAbortMinExecuted < 1 {
				err = errors.New("below 1")
			}
			return err
		}},
		{EnvRequestInterval, func(s string) (err error) {
			c.RequestInterval, err = ParseDays(s)
			return err
		}},
	} {
		s := getenv(v.name)
		if s == "" {
			continue
		}
		if err := v.set(s); err != nil {
			return c, fmt.Errorf("%w: %s=%q: %v", ErrConfig, v.name, s, err)
		}
	}
	if !burstSet {
		c.Burst = max(1, int(c.RotationsPerHour/12))
	}
	return c, nil
}

// ParseDays parses a Go duration or a number of days written "365d".
func ParseDays(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(d, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q is not a number of days", s)
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q is not a duration (e.g. 365d, 8760h, 30m)", s)
	}
	return d, nil
}
