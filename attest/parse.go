package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// MaxStructSize bounds every TPM structure the verifier parses. A
// TPMT_PUBLIC of an RSA-4096 key is about 600 bytes, a TPMS_ATTEST of a
// certify under 300; TPM2B sizes are 16-bit, so nothing legitimate is near.
const MaxStructSize = 4096

// unmarshalExact parses exactly one T from data: no trailing bytes, and
// marshalling it again gives data back (one canonical encoding, so hashes
// of the bytes and of the structure agree). The third-party parser is fed
// outside input: a panic in it is an error.
func unmarshalExact[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](what string, data []byte) (v *T, err error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%s: empty", what)
	}
	if len(data) > MaxStructSize {
		return nil, fmt.Errorf("%s: %d bytes, more than %d", what, len(data), MaxStructSize)
	}
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("%s: malformed", what)
		}
	}()
	v, err = tpm2.Unmarshal[T, P](data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if !bytes.Equal(tpm2.Marshal(*v), data) {
		return nil, fmt.Errorf("%s: trailing or non-canonical bytes", what)
	}
	return v, nil
}

// ParsePublic parses a TPMT_PUBLIC (as the TPM marshals it, without the
// TPM2B size).
func ParsePublic(data []byte) (*tpm2.TPMTPublic, error) {
	return unmarshalExact[tpm2.TPMTPublic]("TPMT_PUBLIC", data)
}

// ParseSignature parses a TPMT_SIGNATURE.
func ParseSignature(data []byte) (*tpm2.TPMTSignature, error) {
	return unmarshalExact[tpm2.TPMTSignature]("TPMT_SIGNATURE", data)
}

// ParseAttest parses a TPMS_ATTEST. Data that does not start with
// TPM_GENERATED_VALUE is refused before parsing.
func ParseAttest(data []byte) (*tpm2.TPMSAttest, error) {
	if len(data) < 4 || binary.BigEndian.Uint32(data) != uint32(tpm2.TPMGeneratedValue) {
		return nil, errBadMagic
	}
	return unmarshalExact[tpm2.TPMSAttest]("TPMS_ATTEST", data)
}

var errBadMagic = errors.New("TPMS_ATTEST does not start with TPM_GENERATED_VALUE (0xff544347)")

// Name is the TPM name of a marshalled TPMT_PUBLIC: nameAlg || H(public).
// Only SHA-256, SHA-384 and SHA-512 name algorithms are accepted.
func Name(public []byte) ([]byte, error) {
	pub, err := ParsePublic(public)
	if err != nil {
		return nil, err
	}
	return nameOf(pub.NameAlg, public)
}

func nameOf(alg tpm2.TPMAlgID, public []byte) ([]byte, error) {
	h, ok := nameHashes[alg]
	if !ok {
		return nil, fmt.Errorf("name algorithm 0x%04x is not SHA-256, SHA-384 or SHA-512", uint16(alg))
	}
	d := h.New()
	d.Write(public)
	out := binary.BigEndian.AppendUint16(nil, uint16(alg))
	return d.Sum(out), nil
}

var nameHashes = map[tpm2.TPMAlgID]crypto.Hash{
	tpm2.TPMAlgSHA256: crypto.SHA256,
	tpm2.TPMAlgSHA384: crypto.SHA384,
	tpm2.TPMAlgSHA512: crypto.SHA512,
}

// publicKey converts a TPMT_PUBLIC to a Go public key, checking an ECC
// point is on its curve and an RSA exponent is sane.
func publicKey(pub *tpm2.TPMTPublic) (crypto.PublicKey, error) {
	k, err := tpm2.Pub(*pub)
	if err != nil {
		return nil, err
	}
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		if _, err := k.ECDH(); err != nil {
			return nil, fmt.Errorf("ECC point: %w", err)
		}
	case *rsa.PublicKey:
		if k.E < 3 || k.E%2 == 0 || k.N.Sign() <= 0 {
			return nil, errors.New("RSA public key: bad exponent or modulus")
		}
	}
	return k, nil
}

// verifySignature checks sig over data with pub, whose scheme (from the
// TPM public area) the signature must follow.
func verifySignature(pub crypto.PublicKey, scheme tpm2.TPMAlgID, schemeHash tpm2.TPMAlgID, data []byte, sig *tpm2.TPMTSignature) error {
	if sig.SigAlg != scheme {
		return fmt.Errorf("signature algorithm 0x%04x, the AK signs with 0x%04x", uint16(sig.SigAlg), uint16(scheme))
	}
	var (
		hashAlg tpm2.TPMAlgID
		check   func(h crypto.Hash, digest []byte) bool
	)
	switch scheme {
	case tpm2.TPMAlgECDSA:
		s, err := sig.Signature.ECDSA()
		if err != nil {
			return err
		}
		k, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			return errors.New("ECDSA signature from a non-ECC key")
		}
		hashAlg = s.Hash
		r, ss := new(big.Int).SetBytes(s.SignatureR.Buffer), new(big.Int).SetBytes(s.SignatureS.Buffer)
		check = func(_ crypto.Hash, d []byte) bool { return ecdsa.Verify(k, d, r, ss) }
	case tpm2.TPMAlgRSASSA:
		s, err := sig.Signature.RSASSA()
		if err != nil {
			return err
		}
		k, ok := pub.(*rsa.PublicKey)
		if !ok {
			return errors.New("RSA signature from a non-RSA key")
		}
		hashAlg = s.Hash
		check = func(h crypto.Hash, d []byte) bool { return rsa.VerifyPKCS1v15(k, h, d, s.Sig.Buffer) == nil }
	case tpm2.TPMAlgRSAPSS:
		s, err := sig.Signature.RSAPSS()
		if err != nil {
			return err
		}
		k, ok := pub.(*rsa.PublicKey)
		if !ok {
			return errors.New("RSA signature from a non-RSA key")
		}
		hashAlg = s.Hash
		check = func(h crypto.Hash, d []byte) bool {
			return rsa.VerifyPSS(k, h, d, s.Sig.Buffer, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}) == nil
		}
	default:
		return fmt.Errorf("signature scheme 0x%04x is not accepted", uint16(scheme))
	}
	if hashAlg != schemeHash {
		return fmt.Errorf("signature hash 0x%04x, the AK's scheme says 0x%04x", uint16(hashAlg), uint16(schemeHash))
	}
	h, ok := nameHashes[hashAlg]
	if !ok {
		return fmt.Errorf("signature hash 0x%04x is not accepted", uint16(hashAlg))
	}
	d := h.New()
	d.Write(data)
	if !check(h, d.Sum(nil)) {
		return errors.New("signature does not verify")
	}
	return nil
}
