package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Trust is the set of EK certificate issuers the verifier accepts.
type Trust struct {
	Roots         *x509.CertPool // manufacturer roots, pinned
	Intermediates *x509.CertPool // may be nil
	// AllowUnverifiedEK accepts an EK certificate that does not chain to
	// Roots, reporting EKUnverified in the Result: for the factory, which
	// records what it read and lets the cloud decide.
	AllowUnverifiedEK bool
}

// EK trust outcomes in Result.EK.
const (
	EKCertified      = "certificate"      // the EK certificate chains to a trusted root
	EKUnverified     = "unverified"       // an EK certificate, not checked against roots (Trust.AllowUnverifiedEK)
	EKFactoryRecored = "factory-recorded" // no EK certificate: the factory recorded the EK public key hash
)

// Expected is what the verifier knows independently of the device.
type Expected struct {
	// QualifyingData is the extraData the attestation must carry
	// (Binding.QualifyingData for this rotation). Required.
	QualifyingData []byte
	// CSR is the certificate request the attestation accompanies: its
	// signature must verify and its key must be the certified key. Either
	// CSR or PublicKey is required.
	CSR       *x509.CertificateRequest
	PublicKey crypto.PublicKey
	// KeySeen reports whether this device used the key (by TPM name)
	// before: true rejects with KEY_REUSED. nil skips the check.
	KeySeen func(name []byte) (bool, error)
	// LastClock, when set, is the clock of the device's previous accepted
	// attestation: reset and restart counts must not go back.
	LastClock *Clock
}

// Clock is the TPM's clock info in an attestation.
type Clock struct {
	Clock        uint64 `json:"clock"`
	ResetCount   uint32 `json:"reset_count"`
	RestartCount uint32 `json:"restart_count"`
	Safe         bool   `json:"safe"`
}

// Result is what a successful verification established.
type Result struct {
	KeyName         []byte           `json:"key_name"` // TPM name of the certified key
	PublicKey       crypto.PublicKey `json:"-"`
	Algorithm       string           `json:"algorithm"`       // keystore.Algorithm names: ecdsa-p256, ...
	KeyFingerprint  string           `json:"key_fingerprint"` // SHA-256 of the DER SubjectPublicKeyInfo
	AKName          []byte           `json:"ak_name"`
	EK              string           `json:"ek"`                  // EKCertified, EKUnverified or EKFactoryRecored
	EKIssuer        string           `json:"ek_issuer,omitempty"` // the EK certificate's issuer
	Clock           Clock            `json:"clock"`
	FirmwareVersion uint64           `json:"firmware_version"`
}

// Verify checks an attestation against a stored enrolment record: every
// point of docs/attestation.md. A rejection is an *Error with a Reason;
// errors that are the caller's (an empty Expected) are plain errors.
func Verify(rec *Record, ev *Evidence, exp Expected, trust Trust) (*Result, error) {
	if rec == nil {
		return nil, reject(ReasonRecordInvalid, "no enrolment record: the device is not attested")
	}
	if ev == nil {
		return nil, reject(ReasonEvidenceMalformed, "no attestation evidence")
	}
	if len(exp.QualifyingData) == 0 {
		return nil, errors.New("attest.Verify: Expected.QualifyingData is required")
	}
	if exp.CSR == nil && exp.PublicKey == nil {
		return nil, errors.New("attest.Verify: Expected.CSR or Expected.PublicKey is required")
	}
	ak, err := rec.check()
	if err != nil {
		return nil, err
	}
	res := &Result{AKName: rec.AKName}

	// The EK, from the stored record: the certificate must be the recorded
	// one, for the recorded key, and chain to a trusted root.
	switch {
	case rec.EKCertSHA256 != "":
		der := rec.EKCert
		if der == nil {
			der = ev.EKCert
		}
		if der == nil {
			return nil, reject(ReasonEKCertMissing, "the record names EK certificate %s but neither the record nor the evidence carries it", rec.EKCertSHA256[:12])
		}
		if sha256Hex(der) != rec.EKCertSHA256 {
			return nil, reject(ReasonEKCertMismatch, "the EK certificate supplied is not the recorded one (%s)", rec.EKCertSHA256[:12])
		}
		cert, status, err := checkEKCert(der, trust)
		if err != nil {
			return nil, err
		}
		if fp, err := spkiSHA256(cert.PublicKey); err != nil || fp != rec.EKPubSHA256 {
			return nil, reject(ReasonEKKeyMismatch, "the recorded EK public key is not the key in the EK certificate")
		}
		res.EK, res.EKIssuer = status, cert.Issuer.String()
	default:
		res.EK = EKFactoryRecored
	}

	// The signature first, over the raw bytes: nothing unauthenticated is
	// parsed further.
	sig, err := ParseSignature(ev.Signature)
	if err != nil {
		return nil, rejectErr(ReasonEvidenceMalformed, err, "signature")
	}
	if err := verifySignature(ak.pub, tpm2.TPMAlgID(ak.scheme), tpm2.TPMAlgID(ak.schemeHash), ev.Attest, sig); err != nil {
		return nil, rejectErr(ReasonBadSignature, err, "the attestation is not signed by the enrolled AK")
	}
	// 1. magic and type
	if len(ev.Attest) < 4 || binary.BigEndian.Uint32(ev.Attest) != uint32(tpm2.TPMGeneratedValue) {
		return nil, reject(ReasonAttestBadMagic, "the AK signed data that does not start with TPM_GENERATED_VALUE: not a TPM-made attestation")
	}
	att, err := ParseAttest(ev.Attest)
	if err != nil {
		return nil, rejectErr(ReasonEvidenceMalformed, err, "attestation")
	}
	if att.Type != tpm2.TPMSTAttestCertify {
		return nil, reject(ReasonAttestNotCertify, "attestation type 0x%04x is not TPM_ST_ATTEST_CERTIFY (0x8017)", uint16(att.Type))
	}
	ci, err := att.Attested.Certify()
	if err != nil {
		return nil, rejectErr(ReasonEvidenceMalformed, err, "certify info")
	}
	// 3. freshness and binding
	if subtle.ConstantTimeCompare(att.ExtraData.Buffer, exp.QualifyingData) != 1 {
		return nil, reject(ReasonQualifyingData, "the attestation's qualifying data is not this rotation's (replayed, or made for another job, thing or nonce)")
	}
	// 4. name
	pub, err := ParsePublic(ev.Public)
	if err != nil {
		return nil, rejectErr(ReasonEvidenceMalformed, err, "certified key's public area")
	}
	name, err := nameOf(pub.NameAlg, ev.Public)
	if err != nil {
		return nil, rejectErr(ReasonNameAlgorithm, err, "certified key")
	}
	if !bytes.Equal(name, ci.Name.Buffer) {
		return nil, reject(ReasonNameMismatch, "the certified name is not the name of the public area presented")
	}
	// 5. the key
	if err := checkKey(pub); err != nil {
		return nil, err
	}
	key, err := publicKey(pub)
	if err != nil {
		return nil, rejectErr(ReasonKeyAlgorithm, err, "certified key")
	}
	alg, err := algorithmOf(key)
	if err != nil {
		return nil, rejectErr(ReasonKeyAlgorithm, err, "certified key")
	}
	// 6. the CSR
	want := exp.PublicKey
	if exp.CSR != nil {
		if err := exp.CSR.CheckSignature(); err != nil {
			return nil, rejectErr(ReasonCSRBadSignature, err, "CSR")
		}
		want = exp.CSR.PublicKey
	}
	if eq, ok := want.(interface{ Equal(crypto.PublicKey) bool }); !ok || !eq.Equal(key) {
		return nil, reject(ReasonCSRKeyMismatch, "the CSR is for another key than the certified one")
	}
	// 7. reuse
	if exp.KeySeen != nil {
		seen, err := exp.KeySeen(name)
		if err != nil {
			return nil, fmt.Errorf("attest.Verify: looking the key up: %w", err)
		}
		if seen {
			return nil, reject(ReasonKeyReused, "this device used the certified key before")
		}
	}
	// 8. clock
	res.Clock = Clock{Clock: att.ClockInfo.Clock, ResetCount: att.ClockInfo.ResetCount, RestartCount: att.ClockInfo.RestartCount, Safe: bool(att.ClockInfo.Safe)}
	if l := exp.LastClock; l != nil {
		c := res.Clock
		if c.ResetCount < l.ResetCount || (c.ResetCount == l.ResetCount && c.RestartCount < l.RestartCount) {
			return nil, reject(ReasonClockRollback, "TPM reset/restart counts %d/%d are below the last rotation's %d/%d", c.ResetCount, c.RestartCount, l.ResetCount, l.RestartCount)
		}
	}
	fp, err := spkiSHA256(key)
	if err != nil {
		return nil, err
	}
	res.KeyName, res.PublicKey, res.Algorithm, res.KeyFingerprint, res.FirmwareVersion = name, key, alg, fp, att.FirmwareVersion
	return res, nil
}

// checkKey: 5. made in the TPM, cannot leave it, a plain signing key.
func checkKey(pub *tpm2.TPMTPublic) error {
	a := pub.ObjectAttributes
	switch {
	case !a.SensitiveDataOrigin:
		return reject(ReasonKeyNotTPMGenerated, "the certified key lacks sensitiveDataOrigin: it was imported, not made in the TPM")
	case !a.FixedTPM || !a.FixedParent:
		return reject(ReasonKeyExportable, "the certified key lacks fixedTPM or fixedParent: it can be duplicated out of the TPM")
	case a.Restricted || !a.SignEncrypt || a.Decrypt:
		return reject(ReasonKeyUsage, "the certified key is not an unrestricted signing-only key (restricted %v, sign %v, decrypt %v)", a.Restricted, a.SignEncrypt, a.Decrypt)
	}
	return nil
}

// checkAK: enrolment check 3.
func checkAK(public, recordedName []byte) (*akInfo, error) {
	pub, err := ParsePublic(public)
	if err != nil {
		return nil, rejectErr(ReasonRecordInvalid, err, "AK public area")
	}
	a := pub.ObjectAttributes
	switch {
	case !a.Restricted || !a.SignEncrypt || a.Decrypt:
		return nil, reject(ReasonAKNotRestrictedSign, "the AK is not a restricted signing key (restricted %v, sign %v, decrypt %v)", a.Restricted, a.SignEncrypt, a.Decrypt)
	case !a.FixedTPM || !a.FixedParent:
		return nil, reject(ReasonAKNotFixed, "the AK lacks fixedTPM or fixedParent: it can leave its TPM")
	case !a.SensitiveDataOrigin:
		return nil, reject(ReasonAKNotTPMGenerated, "the AK lacks sensitiveDataOrigin: it was made outside the TPM")
	}
	name, err := nameOf(pub.NameAlg, public)
	if err != nil {
		return nil, rejectErr(ReasonAKAlgorithm, err, "AK")
	}
	if recordedName != nil && !bytes.Equal(name, recordedName) {
		return nil, reject(ReasonAKNameMismatch, "the recorded AK name is not nameAlg || H(AK public)")
	}
	k, err := publicKey(pub)
	if err != nil {
		return nil, rejectErr(ReasonAKAlgorithm, err, "AK public key")
	}
	if _, err := algorithmOf(k); err != nil {
		return nil, rejectErr(ReasonAKAlgorithm, err, "AK")
	}
	info := &akInfo{pub: k}
	var sch *tpm2.TPMSSchemeHash
	switch pub.Type {
	case tpm2.TPMAlgECC:
		p, err := pub.Parameters.ECCDetail()
		if err != nil {
			return nil, rejectErr(ReasonAKAlgorithm, err, "AK")
		}
		info.scheme = uint16(p.Scheme.Scheme)
		if s, err := p.Scheme.Details.ECDSA(); err == nil {
			sch = (*tpm2.TPMSSchemeHash)(s)
		}
	case tpm2.TPMAlgRSA:
		p, err := pub.Parameters.RSADetail()
		if err != nil {
			return nil, rejectErr(ReasonAKAlgorithm, err, "AK")
		}
		info.scheme = uint16(p.Scheme.Scheme)
		if s, err := p.Scheme.Details.RSASSA(); err == nil {
			sch = (*tpm2.TPMSSchemeHash)(s)
		} else if s, err := p.Scheme.Details.RSAPSS(); err == nil {
			sch = (*tpm2.TPMSSchemeHash)(s)
		}
	}
	if sch == nil {
		return nil, reject(ReasonAKAlgorithm, "the AK has no ECDSA, RSASSA or RSAPSS signing scheme")
	}
	if _, ok := nameHashes[sch.HashAlg]; !ok {
		return nil, reject(ReasonAKAlgorithm, "the AK's scheme hash 0x%04x is not SHA-256, SHA-384 or SHA-512", uint16(sch.HashAlg))
	}
	info.schemeHash = uint16(sch.HashAlg)
	return info, nil
}

// checkEKCert parses an EK certificate and chains it to trust. EK
// certificates carry a critical subjectAltName holding only a
// directoryName (TPM manufacturer, model, version), which Go's x509 leaves
// in UnhandledCriticalExtensions; it is tolerated, nothing else is. The
// extended key usage is the TCG's EK certificate OID, not a TLS one, so
// any usage is accepted.
func checkEKCert(der []byte, trust Trust) (*x509.Certificate, string, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, "", rejectErr(ReasonEKCertInvalid, err, "EK certificate")
	}
	if trust.Roots == nil {
		if trust.AllowUnverifiedEK {
			return cert, EKUnverified, nil
		}
		return nil, "", reject(ReasonEKUntrusted, "no trusted EK roots configured")
	}
	c := *cert
	c.UnhandledCriticalExtensions = nil
	for _, oid := range cert.UnhandledCriticalExtensions {
		if !oid.Equal(oidSubjectAltName) {
			c.UnhandledCriticalExtensions = append(c.UnhandledCriticalExtensions, oid)
		}
	}
	_, err = c.Verify(x509.VerifyOptions{Roots: trust.Roots, Intermediates: trust.Intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		if trust.AllowUnverifiedEK {
			return cert, EKUnverified, nil
		}
		return nil, "", rejectErr(ReasonEKUntrusted, err, "EK certificate issued by %q", cert.Issuer.String())
	}
	return cert, EKCertified, nil
}

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// algorithmOf names an accepted key algorithm as keystore.Algorithm does
// (this package does not import keystore: the cloud functions link it).
func algorithmOf(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return "ecdsa-p256", nil
		case elliptic.P384():
			return "ecdsa-p384", nil
		}
		return "", fmt.Errorf("ECDSA curve %s is not accepted (P-256, P-384)", k.Curve.Params().Name)
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 2048:
			return "rsa-2048", nil
		case 3072:
			return "rsa-3072", nil
		}
		return "", fmt.Errorf("RSA-%d is not accepted (2048, 3072)", k.N.BitLen())
	}
	return "", fmt.Errorf("public key type %T is not accepted", pub)
}

// CheckCertification is the device's own check of a TPM2_Certify output,
// without an enrolment record (bootcertctl key info): TPM-made certify
// structure, the qualifying data, the name of the presented public area,
// a key made in and fixed to the TPM, and that key is pub. It does not
// check the signature or the EK: only Verify, with the stored record, says
// a key is attested.
func CheckCertification(ev *Evidence, qualifyingData []byte, pub crypto.PublicKey) error {
	if len(ev.Attest) < 4 || binary.BigEndian.Uint32(ev.Attest) != uint32(tpm2.TPMGeneratedValue) {
		return reject(ReasonAttestBadMagic, "not a TPM-made attestation")
	}
	att, err := ParseAttest(ev.Attest)
	if err != nil {
		return rejectErr(ReasonEvidenceMalformed, err, "attestation")
	}
	if att.Type != tpm2.TPMSTAttestCertify {
		return reject(ReasonAttestNotCertify, "attestation type 0x%04x is not TPM_ST_ATTEST_CERTIFY", uint16(att.Type))
	}
	ci, err := att.Attested.Certify()
	if err != nil {
		return rejectErr(ReasonEvidenceMalformed, err, "certify info")
	}
	if subtle.ConstantTimeCompare(att.ExtraData.Buffer, qualifyingData) != 1 {
		return reject(ReasonQualifyingData, "the attestation's qualifying data is not the one asked for")
	}
	p, err := ParsePublic(ev.Public)
	if err != nil {
		return rejectErr(ReasonEvidenceMalformed, err, "certified key's public area")
	}
	name, err := nameOf(p.NameAlg, ev.Public)
	if err != nil {
		return rejectErr(ReasonNameAlgorithm, err, "certified key")
	}
	if !bytes.Equal(name, ci.Name.Buffer) {
		return reject(ReasonNameMismatch, "the certified name is not the name of the public area presented")
	}
	if err := checkKey(p); err != nil {
		return err
	}
	key, err := publicKey(p)
	if err != nil {
		return rejectErr(ReasonKeyAlgorithm, err, "certified key")
	}
	if eq, ok := pub.(interface{ Equal(crypto.PublicKey) bool }); !ok || !eq.Equal(key) {
		return reject(ReasonCSRKeyMismatch, "the certified key is not this key")
	}
	return nil
}
