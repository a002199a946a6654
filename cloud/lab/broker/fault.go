package broker

import (
	"crypto/x509"
	"errors"
)

// ErrRefusedByFault is the reason a connection is closed when the lab's
// fault injection refuses its certificate (Config.Fault).
var ErrRefusedByFault = errors.New("refused by fault injection")

// FaultFunc decides, after the certificate checks passed, whether to refuse
// a connection anyway (lab fault injection, e.g. "IoT Core rejects the
// certificates CreateCertificateFromCsr issued"). why names the fault.
type FaultFunc func(leaf *x509.Certificate) (why string, refuse bool)

// fault applies Config.Fault.
func (s *Server) fault(leaf *x509.Certificate) (string, bool) {
	if s.cfg.Fault == nil {
		return "", false
	}
	return s.cfg.Fault(leaf)
}
