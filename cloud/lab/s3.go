package lab

import (
	"fmt"
	"net/http"

	"github.com/bootcert/bootcert/cloud/lab/s3"
)

// startS3 opens the lab's S3 store (DIR/s3.db) and returns its handler.
func (l *Lab) startS3() (http.Handler, error) {
	// With --credentials the S3 API checks SigV4 signatures like the IoT API.
	st, err := s3.Open(s3.Config{Dir: l.cfg.DataDir, Clock: l.cfg.Clock, Logger: l.log.With("component", "s3"), Credentials: l.creds, Principals: l.keys, Region: l.cfg.Region})
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	l.s3 = st
	return st.Handler(), nil
}

// createBucket creates a template bucket in the lab's S3.
func (l *Lab) createBucket(name string) error {
	return l.s3.CreateBucket(name)
}
