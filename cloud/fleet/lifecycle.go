package fleet

import (
	"fmt"
	"strconv"
	"time"
)

// Lifecycle defaults (issue 10, items 4 and 7).
const (
	DefaultCRLGrace       = 7 * 24 * time.Hour
	DefaultRecoveryBudget = 2
	// MaxRecoveryBudget bounds RECOVERY_BUDGET and the operator's per-device
	// budget.
	MaxRecoveryBudget = 1000
)

func (s *Settings) lifecycleFromEnv(getenv func(string) string) error {
	if v := getenv(EnvCRLGrace); v != "" {
		d, err := parseDuration(v)
		if err != nil || d < 0 || d > 90*24*time.Hour {
			return fmt.Errorf("%w: %s=%q is not a duration between 0 and 2160h (e.g. 168h, or seconds)", ErrSetting, EnvCRLGrace, v)
		}
		s.CRLGrace = d
	}
	if v := getenv(EnvRecoveryBudget); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > MaxRecoveryBudget {
			return fmt.Errorf("%w: %s=%q is not a whole number between 0 and %d", ErrSetting, EnvRecoveryBudget, v, MaxRecoveryBudget)
		}
		s.RecoveryBudget = n
	}
	return nil
}
