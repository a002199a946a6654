package keystore

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"fmt"
)

// Algorithm names a key type.
type Algorithm string

// Supported algorithms. ECDSA P-256 is the default: discrete TPMs take
// seconds to make RSA keys.
const (
	ECDSAP256 Algorithm = "ecdsa-p256"
	ECDSAP384 Algorithm = "ecdsa-p384"
	RSA2048   Algorithm = "rsa-2048"
	RSA3072   Algorithm = "rsa-3072"

	DefaultAlgorithm = ECDSAP256
)

// Algorithms lists the supported algorithms, default first.
var Algorithms = []Algorithm{ECDSAP256, ECDSAP384, RSA2048, RSA3072}

// ParseAlgorithm accepts one of Algorithms; "" means the default.
func ParseAlgorithm(s string) (Algorithm, error) {
	if s == "" {
		return DefaultAlgorithm, nil
	}
	a := Algorithm(s)
	if err := a.Validate(); err != nil {
		return "", err
	}
	return a, nil
}

// Validate reports whether a is supported.
func (a Algorithm) Validate() error {
	for _, k := range Algorithms {
		if a == k {
			return nil
		}
	}
	return fmt.Errorf("%w %q (use one of %v)", ErrUnsupportedAlgorithm, string(a), Algorithms)
}

// IsRSA reports whether a is an RSA algorithm.
func (a Algorithm) IsRSA() bool { return a == RSA2048 || a == RSA3072 }

// Bits is the RSA modulus size, or the curve size for ECDSA.
func (a Algorithm) Bits() int {
	switch a {
	case ECDSAP256:
		return 256
	case ECDSAP384:
		return 384
	case RSA2048:
		return 2048
	case RSA3072:
		return 3072
	}
	return 0
}

// Curve is the elliptic curve of an ECDSA algorithm, nil otherwise.
func (a Algorithm) Curve() elliptic.Curve {
	switch a {
	case ECDSAP256:
		return elliptic.P256()
	case ECDSAP384:
		return elliptic.P384()
	}
	return nil
}

// AlgorithmOf tells the algorithm of a public key.
func AlgorithmOf(pub crypto.PublicKey) (Algorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return ECDSAP256, nil
		case elliptic.P384():
			return ECDSAP384, nil
		}
		return "", fmt.Errorf("%w: ECDSA curve %s", ErrUnsupportedAlgorithm, k.Curve.Params().Name)
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 2048:
			return RSA2048, nil
		case 3072:
			return RSA3072, nil
		}
		return "", fmt.Errorf("%w: RSA-%d", ErrUnsupportedAlgorithm, k.N.BitLen())
	}
	return "", fmt.Errorf("%w: public key type %T", ErrUnsupportedAlgorithm, pub)
}
