package lab

import "net/http"

// startS3 returns the S3 handler.
func (l *Lab) startS3() (http.Handler, error) {
	return http.NotFoundHandler(), nil
}
