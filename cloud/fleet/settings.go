// Package fleet holds what every cloud function shares: its settings (from
// the Lambda environment), where records live (thing attributes and S3 keys),
// and the trust checks (allow list, factory CA, CRL, CSR policy).
package fleet

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Environment variable names (the template's Environment.Variables).
const (
	EnvBucket                 = "BUCKET"
	EnvAllowListKey           = "ALLOW_LIST_KEY"
	EnvCRLKey                 = "CRL_KEY"
	EnvCAKey                  = "FACTORY_CA_KEY"
	EnvBootstrapPolicy        = "BOOTSTRAP_POLICY"
	EnvOperationalPolicy      = "OPERATIONAL_POLICY"
	EnvThingType              = "THING_TYPE"
	EnvRotationGroup          = "ROTATION_GROUP"
	EnvJobID                  = "ROTATION_JOB_ID"
	EnvExplicitActivation     = "EXPLICIT_ACTIVATION"
	EnvBootstrapAfterRotation = "BOOTSTRAP_AFTER_ROTATION"
	EnvPreviousCertificate    = "PREVIOUS_CERTIFICATE"
	EnvPresignTTL             = "PRESIGN_TTL"
	EnvRenewalFraction        = "RENEWAL_FRACTION"
	EnvRenewalJitter          = "RENEWAL_JITTER"
	EnvDataEndpoint           = "IOT_DATA_ENDPOINT"
	EnvCRLGrace               = "CRL_GRACE"
	EnvRecoveryBudget         = "RECOVERY_BUDGET"
	EnvAttestationPolicy      = "ATTESTATION_POLICY"
	EnvEKRootsKey             = "EK_ROOTS_KEY"
)

// Attestation policies (docs/attestation.md): whether the vendor requires
// TPM key attestation with a CSR.
const (
	// AttestationRequired: every device must have an enrolment record and
	// send valid evidence; no certificate otherwise.
	AttestationRequired = "required"
	// AttestationOptional: a device with an enrolment record must send
	// valid evidence (it can, so omitting it is a downgrade); a device
	// without one is issued to, recorded as not attested.
	AttestationOptional = "optional"
	// AttestationOff: evidence is ignored.
	AttestationOff = "off"
)

// Settings configure the functions. Every function reads the same set.
type Settings struct {
	Bucket            string
	AllowListKey      string
	CRLKey            string
	CAKey             string
	BootstrapPolicy   string
	OperationalPolicy string
	ThingType         string
	RotationGroup     string
	JobID             string
	// ExplicitActivation: a device joins the rotation group only after
	// POST /devices/{id}/activation.
	ExplicitActivation bool
	// BootstrapAfterRotation is INACTIVE, REVOKED or KEEP.
	BootstrapAfterRotation string
	// PreviousCertificate (the previous operational certificate after a
	// successful rotation) is DELETE, INACTIVE or KEEP.
	PreviousCertificate string
	PresignTTL          time.Duration
	// RenewalFraction is the part of a certificate's life at its end in which
	// it is renewed (default 1/3); RenewalJitter is the fraction of the life
	// by which a thing's renewal may start earlier, spread per thing.
	RenewalFraction float64
	RenewalJitter   float64
	DataEndpoint    string
	// CRLGrace is how long past its nextUpdate a factory CRL is still
	// accepted (default 7 days); after it every check of that CA's
	// certificates fails with ErrCRLExpired.
	CRLGrace time.Duration
	// RecoveryBudget is how many automatic recoveries (an operational
	// certificate revoked, the device back on its bootstrap identity, a new
	// rotation queued) a device gets before an operator must raise its budget
	// (default 2; see Recovery).
	RecoveryBudget int
	// AttestationPolicy is AttestationRequired, AttestationOptional or
	// AttestationOff (default).
	AttestationPolicy string
	// EKRootsKey is the S3 key of the PEM bundle of the TPM manufacturers'
	// EK roots the vendor trusts.
	EKRootsKey string
}

// Defaults.
const (
	DefaultAllowListKey = "trust/allow-list.csv"
	DefaultCRLKey       = "trust/factory.crl"
	DefaultCAKey        = "trust/factory-ca.pem"
	DefaultEKRootsKey   = "trust/ek-roots.pem"
)

// ErrSetting is wrapped by every settings error.
var ErrSetting = errors.New("invalid function setting")

// FromEnv reads the settings; missing optional ones take defaults.
func FromEnv(getenv func(string) string) (Settings, error) {
	s := Settings{
		Bucket:                 getenv(EnvBucket),
		AllowListKey:           or(getenv(EnvAllowListKey), DefaultAllowListKey),
		CRLKey:                 or(getenv(EnvCRLKey), DefaultCRLKey),
		CAKey:                  or(getenv(EnvCAKey), DefaultCAKey),
		BootstrapPolicy:        or(getenv(EnvBootstrapPolicy), "bootcert-bootstrap"),
		OperationalPolicy:      or(getenv(EnvOperationalPolicy), "bootcert-operational"),
		ThingType:              or(getenv(EnvThingType), "bootcert-gateway"),
		RotationGroup:          or(getenv(EnvRotationGroup), "bootcert-rotation"),
		JobID:                  or(getenv(EnvJobID), "bootcert-rotation"),
		BootstrapAfterRotation: strings.ToUpper(or(getenv(EnvBootstrapAfterRotation), "INACTIVE")),
		PreviousCertificate:    strings.ToUpper(or(getenv(EnvPreviousCertificate), "DELETE")),
		PresignTTL:             15 * time.Minute,
		RenewalFraction:        1.0 / 3,
		RenewalJitter:          0.05,
		DataEndpoint:           getenv(EnvDataEndpoint),
		CRLGrace:               DefaultCRLGrace,
		RecoveryBudget:         DefaultRecoveryBudget,
		AttestationPolicy:      strings.ToLower(or(getenv(EnvAttestationPolicy), AttestationOff)),
		EKRootsKey:             or(getenv(EnvEKRootsKey), DefaultEKRootsKey),
	}
	if s.Bucket == "" {
		return s, fmt.Errorf("%w: %s is not set (the S3 bucket holding the allow list, CRL and packages)", ErrSetting, EnvBucket)
	}
	if v := getenv(EnvExplicitActivation); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return s, fmt.Errorf("%w: %s=%q is not true or false", ErrSetting, EnvExplicitActivation, v)
		}
		s.ExplicitActivation = b
	}
	switch s.BootstrapAfterRotation {
	case "INACTIVE", "REVOKED", "KEEP":
	default:
		return s, fmt.Errorf("%w: %s=%q is not INACTIVE, REVOKED or KEEP", ErrSetting, EnvBootstrapAfterRotation, s.BootstrapAfterRotation)
	}
	switch s.PreviousCertificate {
	case "DELETE", "INACTIVE", "KEEP":
	default:
		return s, fmt.Errorf("%w: %s=%q is not DELETE, INACTIVE or KEEP", ErrSetting, EnvPreviousCertificate, s.PreviousCertificate)
	}
	switch s.AttestationPolicy {
	case AttestationRequired, AttestationOptional, AttestationOff:
	default:
		return s, fmt.Errorf("%w: %s=%q is not required, optional or off", ErrSetting, EnvAttestationPolicy, s.AttestationPolicy)
	}
	if v := getenv(EnvPresignTTL); v != "" {
		d, err := parseDuration(v)
		if err != nil || d < time.Minute || d > 7*24*time.Hour {
			return s, fmt.Errorf("%w: %s=%q is not a duration between 1m and 168h (e.g. 15m, or seconds)", ErrSetting, EnvPresignTTL, v)
		}
		s.PresignTTL = d
	}
	if v := getenv(EnvRenewalFraction); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 || f >= 1 {
			return s, fmt.Errorf("%w: %s=%q is not a number between 0 and 1", ErrSetting, EnvRenewalFraction, v)
		}
		s.RenewalFraction = f
	}
	if v := getenv(EnvRenewalJitter); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || f >= 1 {
			return s, fmt.Errorf("%w: %s=%q is not a number in [0, 1)", ErrSetting, EnvRenewalJitter, v)
		}
		s.RenewalJitter = f
	}
	if err := s.lifecycleFromEnv(getenv); err != nil {
		return s, err
	}
	return s, nil
}

func parseDuration(v string) (time.Duration, error) {
	if n, err := strconv.Atoi(v); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	return time.ParseDuration(v)
}

func or(v, d string) string {
	if v == "" {
		return d
	}
	return v
}
