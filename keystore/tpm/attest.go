package tpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/bootcert/bootcert/keystore"
)

var (
	_ keystore.Attester        = (*Backend)(nil)
	_ keystore.Endorser        = (*Backend)(nil)
	_ keystore.LockoutReporter = (*Backend)(nil)
)

// AKTemplate is the attestation key's template: ECC P-256, ECDSA with
// SHA-256, a restricted signing key made and kept in the TPM (fixedTPM,
// fixedParent, sensitiveDataOrigin), used with an empty password
// (userWithAuth) and noDA (safe: its auth value is empty, see keyTemplate).
// A restricted key signs only digests the TPM computed itself (or that do
// not start with TPM_GENERATED_VALUE), so what it signs and starts with
// that magic was made by the TPM.
var AKTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		Restricted:          true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme: tpm2.TPMTECCScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		CurveID: tpm2.TPMECCNistP256,
		KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
}

// ekTemplateH3 is the TCG EK Credential Profile (2.x) high-range template
// H-3, ECC NIST P-384, whose certificate lives at NV 0x01C00016. swtpm
// (swtpm_setup --ecc) makes its ECC EK with it; checked against swtpm
// 0.7.1's EK public area and certificate.
var ekTemplateH3 = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA384,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		AdminWithPolicy:     true,
		Restricted:          true,
		Decrypt:             true,
	},
	AuthPolicy: tpm2.TPM2BDigest{Buffer: []byte{ // PolicyB, SHA-384
		0xb2, 0x6e, 0x7d, 0x28, 0xd1, 0x1a, 0x50, 0xbc, 0x53, 0xd8, 0x82, 0xbc,
		0xf5, 0xfd, 0x3a, 0x1a, 0x07, 0x41, 0x48, 0xbb, 0x35, 0xd3, 0xb4, 0xe4,
		0xcb, 0x1c, 0x0a, 0xd9, 0xbd, 0xe4, 0x19, 0xca, 0xcb, 0x47, 0xba, 0x09,
		0x69, 0x96, 0x46, 0x15, 0x0f, 0x9f, 0xc0, 0x00, 0xf3, 0xf8, 0x0e, 0x12,
	}},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{
			Algorithm: tpm2.TPMAlgAES,
			KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(256)),
			Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
		},
		Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
		CurveID: tpm2.TPMECCNistP384,
		KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
}

// ekKind is one EK the TCG EK Credential Profile defines: its certificate's
// NV index and its template.
type ekKind struct {
	name  string
	nv    tpm2.TPMHandle
	tmpl  tpm2.TPMTPublic
	alone bool // userWithAuth set: usable with the (empty) endorsement password, no policy session
}

// ekKinds in the order Endorsement tries them: the RSA EK first (every TPM
// has one; credential activation with it is the common path), then ECC.
var ekKinds = []ekKind{
	{name: "rsa-2048", nv: 0x01C00002, tmpl: tpm2.RSAEKTemplate},
	{name: "ecc-p256", nv: 0x01C0000A, tmpl: tpm2.ECCEKTemplate},
	{name: "ecc-p384", nv: 0x01C00016, tmpl: ekTemplateH3, alone: true},
}

func ekKindNamed(name string) (ekKind, bool) {
	for _, k := range ekKinds {
		if k.name == name {
			return k, true
		}
	}
	return ekKind{}, false
}

// maxNVChunk bounds one TPM2_NV_Read; TPM_PT_NV_BUFFER_MAX is at least 512
// on every TPM we know of (swtpm: 1024).
const maxNVChunk = 512

// CreateAK makes an attestation key (AKTemplate) at ak, a key file or a
// persistent handle. It never overwrites.
func (b *Backend) CreateAK(ctx context.Context, ak *keystore.URI) (keystore.AttestationKey, error) {
	if err := ctx.Err(); err != nil {
		return keystore.AttestationKey{}, err
	}
	k, err := parseSpec(ak)
	if err != nil {
		return keystore.AttestationKey{}, err
	}
	s, err := b.create(k, AKTemplate, "attestation key", true, keystore.FileOptions(ctx))
	if err != nil {
		return keystore.AttestationKey{}, err
	}
	defer s.Close()
	pub := tpm2.Marshal(s.pubArea)
	return keystore.AttestationKey{URI: k.String(), Public: pub, Name: s.name.Buffer}, nil
}

// Certify has the AK at akURI certify the key at keyURI (TPM2_Certify with
// qualifyingData). Both are loaded for the command and flushed after it:
// Load, Load, Certify, FlushContext, FlushContext.
func (b *Backend) Certify(ctx context.Context, keyURI, akURI *keystore.URI, qualifyingData []byte) (keystore.Certification, error) {
	if len(qualifyingData) > 64 {
		return keystore.Certification{}, fmt.Errorf("qualifying data is %d bytes, at most 64 (use a digest)", len(qualifyingData))
	}
	key, err := b.open(ctx, keyURI, false)
	if err != nil {
		return keystore.Certification{}, fmt.Errorf("key: %w", err)
	}
	defer key.Close()
	ak, err := b.open(ctx, akURI, true)
	if err != nil {
		return keystore.Certification{}, fmt.Errorf("attestation key: %w", err)
	}
	defer ak.Close()
	if key.spec.device != ak.spec.device {
		return keystore.Certification{}, fmt.Errorf("the key is on TPM %s and the attestation key on %s: an AK certifies keys of its own TPM only", key.spec.device, ak.spec.device)
	}
	var out keystore.Certification
	err = key.withDevice(func(d *device) error {
		d.pin = []*Signer{key, ak}
		defer func() { d.pin = nil }()
		if err := key.ensureLoaded(d); err != nil {
			return err
		}
		if err := ak.ensureLoaded(d); err != nil {
			return err
		}
		rsp, err := run(b, d, "certify "+key.spec.String(), tpm2.Certify{
			ObjectHandle:   tpm2.AuthHandle{Handle: key.h, Name: key.name, Auth: tpm2.PasswordAuth(nil)},
			SignHandle:     tpm2.AuthHandle{Handle: ak.h, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: qualifyingData},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		})
		if err != nil {
			return err
		}
		out.Attest = rsp.CertifyInfo.Bytes()
		out.Signature = tpm2.Marshal(rsp.Signature)
		out.Public = tpm2.Marshal(key.pubArea)
		return nil
	})
	if err != nil {
		return keystore.Certification{}, err
	}
	return out, nil
}

// Endorsement reads the EK of the TPM behind u: the certificate of the first
// EK kind (RSA-2048, ECC P-256, ECC P-384) whose NV index holds one, and the
// EK public area recreated from its template (TPM2_CreatePrimary in the
// endorsement hierarchy, flushed at once). The recreated key must equal the
// certificate's: a mismatch is an error. Without any certificate the RSA EK
// is recreated and returned alone; the factory then records its hash.
func (b *Backend) Endorsement(ctx context.Context, u *keystore.URI) (keystore.Endorsement, error) {
	if err := ctx.Err(); err != nil {
		return keystore.Endorsement{}, err
	}
	k, err := parseSpec(u)
	if err != nil {
		return keystore.Endorsement{}, err
	}
	s := &Signer{b: b, spec: k}
	var out keystore.Endorsement
	err = s.withDevice(func(d *device) error {
		kind := ekKinds[0]
		var cert []byte
		for _, c := range ekKinds {
			der, err := d.readNV(b, c.nv)
			if err != nil {
				return err
			}
			if der != nil {
				kind, cert = c, der
				break
			}
		}
		pub, err := d.ekPublic(b, kind)
		if err != nil {
			return err
		}
		if cert != nil {
			c, err := x509.ParseCertificate(cert)
			if err != nil {
				return fmt.Errorf("EK certificate at NV 0x%08x: %w", uint32(kind.nv), err)
			}
			k, err := tpm2.Pub(*pub)
			if err != nil {
				return fmt.Errorf("EK public area: %w", err)
			}
			if !publicKeysEqual(c.PublicKey, k) {
				return fmt.Errorf("the EK recreated from the %s template is not the key in the EK certificate at NV 0x%08x (non-standard EK template, or the certificate is not this TPM's)", kind.name, uint32(kind.nv))
			}
			out.NVIndex = uint32(kind.nv)
		}
		out.Certificate, out.Public, out.Template = cert, tpm2.Marshal(*pub), kind.name
		return nil
	})
	if err != nil {
		return keystore.Endorsement{}, err
	}
	return out, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

// readNV reads a whole NV index, nil when it is not defined. Caller holds
// d.mu.
func (d *device) readNV(b *Backend, index tpm2.TPMHandle) ([]byte, error) {
	op := fmt.Sprintf("read NV 0x%08x public area", uint32(index))
	rsp, err := run(b, d, op, tpm2.NVReadPublic{NVIndex: index})
	if isRC(err, tpm2.TPMRCHandle) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	pub, err := rsp.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("NV 0x%08x public area: %w", uint32(index), err)
	}
	auth := tpm2.AuthHandle{Handle: index, Name: rsp.NVName, Auth: tpm2.PasswordAuth(nil)}
	if !pub.Attributes.AuthRead && pub.Attributes.OwnerRead {
		auth = tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	}
	size := int(pub.DataSize)
	data := make([]byte, 0, size)
	for len(data) < size {
		n := min(size-len(data), maxNVChunk)
		r, err := run(b, d, fmt.Sprintf("read NV 0x%08x", uint32(index)), tpm2.NVRead{
			AuthHandle: auth,
			NVIndex:    tpm2.NamedHandle{Handle: index, Name: rsp.NVName},
			Size:       uint16(n),
			Offset:     uint16(len(data)),
		})
		if err != nil {
			return nil, err
		}
		if len(r.Data.Buffer) == 0 {
			return nil, fmt.Errorf("NV 0x%08x: empty read at offset %d", uint32(index), len(data))
		}
		data = append(data, r.Data.Buffer...)
	}
	// Some TPMs pad the certificate index: keep the DER certificate only.
	if len(data) > 4 && data[0] == 0x30 && data[1] == 0x82 {
		if n := 4 + (int(data[2])<<8 | int(data[3])); n <= len(data) {
			data = data[:n]
		}
	}
	return data, nil
}

// ekPublic recreates the EK of kind and flushes it. Caller holds d.mu.
func (d *device) ekPublic(b *Backend, kind ekKind) (*tpm2.TPMTPublic, error) {
	rsp, err := d.createEK(b, kind)
	if err != nil {
		return nil, err
	}
	if _, err := run(b, d, "flush EK", tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}); err != nil {
		return nil, err
	}
	return rsp.OutPublic.Contents()
}

func (d *device) createEK(b *Backend, kind ekKind) (*tpm2.CreatePrimaryResponse, error) {
	return runRoom(b, d, nil, "create "+kind.name+" EK", tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(kind.tmpl),
	})
}

// ActivateCredential recreates the EK ek describes (its public area must
// equal ek.Public), loads the AK and runs TPM2_ActivateCredential. The EK's
// policy (PolicySecret of the endorsement hierarchy) is satisfied with the
// empty endorsement password; an endorsement hierarchy with a password
// fails with an authorization error, never retried.
func (b *Backend) ActivateCredential(ctx context.Context, akURI *keystore.URI, ek keystore.Endorsement, credentialBlob, encryptedSecret []byte) ([]byte, error) {
	kind, ok := ekKindNamed(ek.Template)
	if !ok {
		return nil, fmt.Errorf("unknown EK template %q", ek.Template)
	}
	ak, err := b.open(ctx, akURI, true)
	if err != nil {
		return nil, fmt.Errorf("attestation key: %w", err)
	}
	defer ak.Close()
	var secret []byte
	err = ak.withDevice(func(d *device) error {
		d.pin = []*Signer{ak}
		defer func() { d.pin = nil }()
		if err := ak.ensureLoaded(d); err != nil {
			return err
		}
		ekr, err := d.createEK(b, kind)
		if err != nil {
			return err
		}
		defer run(b, d, "flush EK", tpm2.FlushContext{FlushHandle: ekr.ObjectHandle})
		if !bytes.Equal(ekr.OutPublic.Bytes(), ek.Public) {
			return fmt.Errorf("this TPM's %s EK is not the one given", kind.name)
		}
		var auth tpm2.Session = tpm2.PasswordAuth(nil)
		if !kind.alone {
			auth = tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(t transport.TPM, h tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
				_, err := tpm2.PolicySecret{
					AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
					PolicySession: h,
					NonceTPM:      nonce,
				}.Execute(t)
				return err
			})
		}
		rsp, err := run(b, d, "activate credential", tpm2.ActivateCredential{
			ActivateHandle: tpm2.AuthHandle{Handle: ak.h, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
			KeyHandle:      tpm2.AuthHandle{Handle: ekr.ObjectHandle, Name: ekr.Name, Auth: auth},
			CredentialBlob: tpm2.TPM2BIDObject{Buffer: credentialBlob},
			Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encryptedSecret},
		})
		if err != nil {
			return err
		}
		secret = rsp.CertInfo.Buffer
		return nil
	})
	if err != nil {
		return nil, err
	}
	return secret, nil
}

// Lockout reads the dictionary-attack state with one TPM2_GetCapability
// (TPM_PT_PERMANENT .. TPM_PT_LOCKOUT_RECOVERY). It uses no authorization.
func (b *Backend) Lockout(ctx context.Context, u *keystore.URI) (keystore.Lockout, error) {
	if err := ctx.Err(); err != nil {
		return keystore.Lockout{}, err
	}
	k, err := parseSpec(u)
	if err != nil {
		return keystore.Lockout{}, err
	}
	s := &Signer{b: b, spec: k}
	var out keystore.Lockout
	err = s.withDevice(func(d *device) error {
		first := uint32(tpm2.TPMPTPermanent)
		rsp, err := run(b, d, "read lockout properties", tpm2.GetCapability{
			Capability:    tpm2.TPMCapTPMProperties,
			Property:      first,
			PropertyCount: uint32(tpm2.TPMPTLockoutRecovery) - first + 1,
		})
		if err != nil {
			return err
		}
		props, err := rsp.CapabilityData.Data.TPMProperties()
		if err != nil {
			return err
		}
		seen := 0
		for _, p := range props.TPMProperty {
			switch p.Property {
			case tpm2.TPMPTPermanent:
				out.InLockout = p.Value&(1<<9) != 0 // TPMA_PERMANENT.inLockout
			case tpm2.TPMPTLockoutCounter:
				out.Counter = p.Value
			case tpm2.TPMPTMaxAuthFail:
				out.MaxTries = p.Value
			case tpm2.TPMPTLockoutInterval:
				out.IntervalSeconds = p.Value
			case tpm2.TPMPTLockoutRecovery:
				out.RecoverySeconds = p.Value
			default:
				continue
			}
			seen++
		}
		if seen != 5 {
			return errors.New("the TPM did not report every TPM_PT_LOCKOUT_* property")
		}
		return nil
	})
	if err != nil {
		return keystore.Lockout{}, err
	}
	return out, nil
}

var _ keystore.EKCertificateReader = (*Backend)(nil)

// EKCertificate reads the first EK certificate (RSA-2048, ECC P-256, ECC
// P-384 NV index) of the TPM behind u, nil when there is none: NV reads
// only, no EK is created (bootcertd sends it with each attestation; the
// verifier checks it against the enrolment record, which pins it).
func (b *Backend) EKCertificate(ctx context.Context, u *keystore.URI) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k, err := parseSpec(u)
	if err != nil {
		return nil, err
	}
	s := &Signer{b: b, spec: k}
	var out []byte
	err = s.withDevice(func(d *device) error {
		for _, c := range ekKinds {
			der, err := d.readNV(b, c.nv)
			if err != nil {
				return err
			}
			if der != nil {
				out = der
				return nil
			}
		}
		return nil
	})
	return out, err
}
