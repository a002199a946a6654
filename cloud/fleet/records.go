package fleet

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
)

// Thing attributes the functions keep on each bootcert-gateway thing. Every
// value is a certificate ID, "true", or a Unix time: the registry is the
// source of truth, never something a device sends.
const (
	// AttrBootstrap is the bootstrap certificate's ID, set by the activator.
	AttrBootstrap = "bootstrapCert"
	// AttrActivated is "true" once the device was approved (explicit
	// activation) or activated automatically.
	AttrActivated = "activated"
	// AttrOperational is the committed operational certificate's ID (set at
	// the ack).
	AttrOperational = "operationalCert"
	// AttrPrevious is the operational certificate it replaced, which the
	// reaper retires when the job execution SUCCEEDED.
	AttrPrevious = "previousCert"
	// AttrNotBefore and AttrNotAfter are the committed certificate's validity
	// (Unix seconds), read by the renewal function without describing it.
	AttrNotBefore = "certNotBefore"
	AttrNotAfter  = "certNotAfter"
)

// S3 layout under the bucket.
const (
	// PackagePrefix + thing + "/" + certificateId + ".pem": the certificate
	// package (certificate chain only, never a key), with the certificate ID
	// in the object metadata MetaCertificateID.
	PackagePrefix = "packages/"
	// IssuancePrefix + thing + "/" + jobId + "/" + sha256(CSR DER) + ".json":
	// the idempotency record of one issuance.
	IssuancePrefix = "issuance/"
	// RejectionPrefix + certificateId + ".json": why the activator refused a
	// bootstrap certificate.
	RejectionPrefix = "rejections/"
	// PreProvisionedName is the package name of the final certificate made at
	// JITR in pre-provisioned mode.
	PreProvisionedName = "preprovisioned"
	// MetaCertificateID is the S3 metadata key holding the certificate ID.
	MetaCertificateID = "certificate-id"
)

// DenyListKey is the deny list: a JSON object {"devices": {thing: record}}
// of every decommissioned device (lifecycle.Decommission). It lives under
// trust/ (every function may read it) and setup creates it empty, because
// S3 answers a GET of a missing key with 403, not 404, to a role without
// s3:ListBucket
// (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html).
const DenyListKey = "trust/decommissioned.json"

// DenyList is the deny list object.
type DenyList struct {
	Devices map[string]json.RawMessage `json:"devices"`
}

// PackageKey is the S3 key of a certificate package.
func PackageKey(thing, name string) string { return PackagePrefix + thing + "/" + name + ".pem" }

// IssuanceKey is the S3 key of the issuance record for (thing, job, CSR).
func IssuanceKey(thing, jobID string, csrDER []byte) string {
	return IssuancePrefix + thing + "/" + jobID + "/" + CSRSHA256(csrDER) + ".json"
}

// CSRSHA256 is the lower-hex SHA-256 of a CSR's DER, which names its
// issuance record.
func CSRSHA256(csrDER []byte) string {
	sum := sha256.Sum256(csrDER)
	return hex.EncodeToString(sum[:])
}

// IssuanceJobPrefix lists all issuance records of one job execution.
func IssuanceJobPrefix(thing, jobID string) string {
	return IssuancePrefix + thing + "/" + jobID + "/"
}

// Issuance is the idempotency record of one issued certificate.
type Issuance struct {
	Thing         string `json:"thing"`
	JobID         string `json:"jobId"`
	CSRSHA256     string `json:"csrSha256"`
	CertificateID string `json:"certificateId"`
	IssuedAt      string `json:"issuedAt"`
}

// CertARNID returns the certificate ID at the end of a certificate ARN
// (arn:aws:iot:REGION:ACCOUNT:cert/ID), or "" when it is not one.
func CertARNID(arn string) string {
	i := strings.LastIndex(arn, ":cert/")
	if i < 0 {
		return ""
	}
	return arn[i+len(":cert/"):]
}

// AttestationPrefix + thing + "/" + keyName + ".json" (keyName the
// lower-hex TPM name of the key) is the record of an attested key: which
// key, which AK vouched for it, for which request, when. AttestationPrefix
// + thing + "/latest.json" is a copy of the thing's last one. The vendor
// writes them when a CSR's attestation verifies, before it issues; a key
// name that has a record for another request is a reused key.
const AttestationPrefix = "attestation/"

// AttestedKeyKey is the S3 key of the record of an attested key.
func AttestedKeyKey(thing, keyNameHex string) string {
	return AttestationPrefix + thing + "/" + keyNameHex + ".json"
}

// LatestAttestationKey is the S3 key of a thing's last attested key.
func LatestAttestationKey(thing string) string { return AttestationPrefix + thing + "/latest.json" }

// AttestedKey is the record of a key whose attestation verified.
type AttestedKey struct {
	Thing string `json:"thing"`
	// KeyName is the key's TPM name (lower hex), KeyFingerprint the SHA-256
	// of its DER SubjectPublicKeyInfo, Algorithm its keystore algorithm.
	KeyName        string `json:"keyName"`
	KeyFingerprint string `json:"keyFingerprint"`
	Algorithm      string `json:"algorithm"`
	// AKName is the enrolled AK that certified it (lower hex TPM name).
	AKName string `json:"akName"`
	// EK is how the EK was established: "certificate" (chains to a
	// trusted root) or "factory-recorded"; EKIssuer the certificate's issuer.
	EK       string `json:"ek"`
	EKIssuer string `json:"ekIssuer,omitempty"`
	// The request it came with: the certificate the device was connected
	// with (Principal), the job, the clientToken and the CSR.
	JobID       string `json:"jobId"`
	Principal   string `json:"principal"`
	ClientToken string `json:"clientToken"`
	CSRSHA256   string `json:"csrSha256"`
	// TPM clock info of the attestation (reset and restart counts must
	// not go back at the next rotation).
	ResetCount   uint32 `json:"resetCount"`
	RestartCount uint32 `json:"restartCount"`
	VerifiedAt   string `json:"verifiedAt"`
	// Policy is the fleet's AttestationPolicy at the time.
	Policy string `json:"policy"`
}
