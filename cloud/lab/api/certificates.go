package api

import (
	"sort"

	"github.com/bootcert/bootcert/cloud/lab/registry"
)

// Replies of the certificate and CA operations. Fields are in the order of
// their JSON names (the order the lab's map replies had); a nil pointer
// is answered as null, as AWS leaves a member out or sends null, which
// the SDK decodes the same way.

type registrationCodeReply struct {
	RegistrationCode string `json:"registrationCode"`
}

// certificateRef answers the operations that create or register a
// certificate (certificateArn and certificateId).
type certificateRef struct {
	ARN string `json:"certificateArn"`
	ID  string `json:"certificateId"`
}

type validity struct {
	NotBefore *float64 `json:"notBefore,omitempty"`
	NotAfter  *float64 `json:"notAfter,omitempty"`
}

// caCertificateDescription is DescribeCACertificate's
// CACertificateDescription.
type caCertificateDescription struct {
	AutoRegistrationStatus string   `json:"autoRegistrationStatus"`
	ARN                    string   `json:"certificateArn"`
	ID                     string   `json:"certificateId"`
	CertificateMode        string   `json:"certificateMode"`
	PEM                    string   `json:"certificatePem"`
	CreationDate           *float64 `json:"creationDate"`
	CustomerVersion        int      `json:"customerVersion"`
	GenerationID           string   `json:"generationId"`
	LastModifiedDate       *float64 `json:"lastModifiedDate"`
	OwnedBy                string   `json:"ownedBy"`
	Status                 string   `json:"status"`
	Validity               validity `json:"validity"`
}

// certificateDescription is DescribeCertificate's CertificateDescription.
type certificateDescription struct {
	CACertificateID  *string  `json:"caCertificateId"`
	ARN              string   `json:"certificateArn"`
	ID               string   `json:"certificateId"`
	CertificateMode  string   `json:"certificateMode"`
	PEM              string   `json:"certificatePem"`
	CreationDate     *float64 `json:"creationDate"`
	CustomerVersion  int      `json:"customerVersion"`
	GenerationID     string   `json:"generationId"`
	LastModifiedDate *float64 `json:"lastModifiedDate"`
	OwnedBy          string   `json:"ownedBy"`
	Status           string   `json:"status"`
	Validity         validity `json:"validity"`
}

// certificateSummary is an entry of ListCertificates(ByCA).
type certificateSummary struct {
	ARN             string   `json:"certificateArn"`
	ID              string   `json:"certificateId"`
	CertificateMode string   `json:"certificateMode"`
	CreationDate    *float64 `json:"creationDate"`
	Status          string   `json:"status"`
}

// caCertificateSummary is an entry of ListCACertificates.
type caCertificateSummary struct {
	ARN     string   `json:"certificateArn"`
	ID      string   `json:"certificateId"`
	Status  string   `json:"status"`
	Created *float64 `json:"creationDate,omitempty"`
}

// certID returns the certificateId path parameter after checking its form:
// AWS answers an ID that is not 64 hex digits with 400
// InvalidRequestException, before it looks it up
// (https://docs.aws.amazon.com/iot/latest/apireference/API_DescribeCertificate.html,
// certificateId: "Fixed length of 64", pattern "(0x)?[a-fA-F0-9]+").
func certID(q *request, name string) (string, error) {
	id := q.v(name)
	ok := len(id) == 64
	for _, c := range id {
		ok = ok && ('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F')
	}
	if !ok {
		return "", errInvalid("%s %q: not 64 hexadecimal digits", name, id)
	}
	return id, nil
}

func (s *Server) getRegistrationCode(q *request) (any, error) {
	return registrationCodeReply{s.reg.RegistrationCode()}, nil
}

func (s *Server) registerCACertificate(q *request) (any, error) {
	var in struct {
		CACertificate           string `json:"caCertificate"`
		VerificationCertificate string `json:"verificationCertificate"`
		CertificateMode         string `json:"certificateMode"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	if in.CACertificate == "" {
		return nil, errInvalid("caCertificate is required")
	}
	active, err := q.boolQuery("setAsActive")
	if err != nil {
		return nil, err
	}
	auto, err := q.boolQuery("allowAutoRegistration")
	if err != nil {
		return nil, err
	}
	c, err := s.reg.RegisterCACertificate(registry.RegisterCAInput{CACertificatePEM: in.CACertificate,
		VerificationCertificatePEM: in.VerificationCertificate, SetAsActive: active, AllowAutoRegistration: auto,
		CertificateMode: in.CertificateMode})
	if err != nil {
		return nil, err
	}
	q.res = c.ID
	return certificateRef{c.ARN, c.ID}, nil
}

func (s *Server) describeCACertificate(q *request) (any, error) {
	id, err := certID(q, "certificateId")
	if err != nil {
		return nil, err
	}
	c, err := s.reg.DescribeCACertificate(id)
	if err != nil {
		return nil, err
	}
	return struct {
		D caCertificateDescription `json:"certificateDescription"`
	}{caCertificateDescription{
		AutoRegistrationStatus: c.AutoRegistrationStatus, ARN: c.ARN, ID: c.ID, CertificateMode: c.CertificateMode,
		PEM: c.PEM, CreationDate: epoch(c.CreationDate), CustomerVersion: 1, GenerationID: c.GenerationID,
		LastModifiedDate: epoch(c.LastModifiedDate), OwnedBy: c.OwnedBy, Status: c.Status,
		Validity: validity{epoch(c.NotBefore), epoch(c.NotAfter)},
	}}, nil
}

func (s *Server) updateCACertificate(q *request) (any, error) {
	id, err := certID(q, "certificateId")
	if err != nil {
		return nil, err
	}
	return nil, s.reg.UpdateCACertificate(id, q.query.Get("newStatus"), q.query.Get("newAutoRegistrationStatus"))
}

func (s *Server) deleteCACertificate(q *request) (any, error) {
	id, err := certID(q, "certificateId")
	if err != nil {
		return nil, err
	}
	return nil, s.reg.DeleteCACertificate(id)
}

func (s *Server) listCACertificates(q *request) (any, error) {
	cas := s.reg.CACertificates()
	asc, err := q.boolQuery("isAscendingOrder")
	if err != nil {
		return nil, err
	}
	sort.SliceStable(cas, func(a, b int) bool {
		if asc {
			return cas[a].CreationDate.Before(cas[b].CreationDate)
		}
		return cas[a].CreationDate.After(cas[b].CreationDate)
	})
	list := make([]caCertificateSummary, len(cas))
	for i, c := range cas {
		list[i] = caCertificateSummary{c.ARN, c.ID, c.Status, epoch(c.CreationDate)}
	}
	return listReply(q, "certificates", list, true)
}

func (s *Server) createCertificateFromCsr(q *request) (any, error) {
	var in struct {
		CSR string `json:"certificateSigningRequest"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	if in.CSR == "" {
		return nil, errInvalid("certificateSigningRequest is required")
	}
	active, err := q.boolQuery("setAsActive")
	if err != nil {
		return nil, err
	}
	c, err := s.reg.CreateCertificateFromCsr(in.CSR, active)
	if err != nil {
		return nil, err
	}
	q.res = c.ID
	return struct {
		ARN string `json:"certificateArn"`
		ID  string `json:"certificateId"`
		PEM string `json:"certificatePem"`
	}{c.ARN, c.ID, c.PEM}, nil
}

func (s *Server) describeCertificate(q *request) (any, error) {
	id, err := certID(q, "certificateId")
	if err != nil {
		return nil, err
	}
	c, err := s.reg.DescribeCertificate(id)
	if err != nil {
		return nil, err
	}
	return struct {
		D certificateDescription `json:"certificateDescription"`
	}{certificateDescription{
		CACertificateID: strPtr(c.CACertificateID), ARN: c.ARN, ID: c.ID, CertificateMode: c.CertificateMode,
		PEM: c.PEM, CreationDate: epoch(c.CreationDate), CustomerVersion: 1, GenerationID: c.GenerationID,
		LastModifiedDate: epoch(c.LastModifiedDate), OwnedBy: c.OwnedBy, Status: c.Status,
		Validity: validity{epoch(c.NotBefore), epoch(c.NotAfter)},
	}}, nil
}

func (s *Server) updateCertificate(q *request) (any, error) {
	id, err := certID(q, "certificateId")
	if err != nil {
		return nil, err
	}
	st := q.query.Get("newStatus")
	if st == "" {
		return nil, errInvalid("newStatus is required")
	}
	return nil, s.reg.UpdateCertificate(id, st)
}

func (s *Server) deleteCertificate(q *request) (any, error) {
	id, err := certID(q, "certificateId")
	if err != nil {
		return nil, err
	}
	force, err := q.boolQuery("forceDelete")
	if err != nil {
		return nil, err
	}
	return nil, s.reg.DeleteCertificate(id, force)
}

func (s *Server) registerCertificate(q *request) (any, error) {
	var in struct {
		CertificatePem   string `json:"certificatePem"`
		CACertificatePem string `json:"caCertificatePem"`
		Status           string `json:"status"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	if in.CertificatePem == "" {
		return nil, errInvalid("certificatePem is required")
	}
	if in.Status == "" {
		// Deprecated setAsActive query parameter.
		if active, err := q.boolQuery("setAsActive"); err != nil {
			return nil, err
		} else if active {
			in.Status = registry.StatusActive
		}
	}
	c, err := s.reg.RegisterCertificate(in.CertificatePem, in.CACertificatePem, in.Status)
	if err != nil {
		return nil, err
	}
	q.res = c.ID
	return certificateRef{c.ARN, c.ID}, nil
}

func (s *Server) registerCertificateWithoutCA(q *request) (any, error) {
	var in struct {
		CertificatePem string `json:"certificatePem"`
		Status         string `json:"status"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	if in.CertificatePem == "" {
		return nil, errInvalid("certificatePem is required")
	}
	c, err := s.reg.RegisterCertificateWithoutCA(in.CertificatePem, in.Status)
	if err != nil {
		return nil, err
	}
	q.res = c.ID
	return certificateRef{c.ARN, c.ID}, nil
}

// listCertificates serves ListCertificates and ListCertificatesByCA.
func (s *Server) listCertificates(q *request) (any, error) {
	caID := q.v("caCertificateId") // ListCertificatesByCA; an unknown CA lists nothing
	certs := s.reg.ListCertificates(caID)
	asc, err := q.boolQuery("isAscendingOrder")
	if err != nil {
		return nil, err
	}
	if !asc { // AWS lists newest first unless isAscendingOrder
		for i, k := 0, len(certs)-1; i < k; i, k = i+1, k-1 {
			certs[i], certs[k] = certs[k], certs[i]
		}
	}
	list := make([]certificateSummary, len(certs))
	for i, c := range certs {
		list[i] = certificateSummary{ARN: c.ARN, ID: c.ID, Status: c.Status, CertificateMode: c.CertificateMode,
			CreationDate: epoch(c.CreationDate)}
	}
	return listReply(q, "certificates", list, true)
}
