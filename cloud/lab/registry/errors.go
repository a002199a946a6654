package registry

import (
	"errors"
	"fmt"
	"strings"

	"github.com/bootcert/bootcert/protocol"
)

// Code classifies a registry error. The names follow the AWS IoT Jobs MQTT
// error codes where one exists (ErrorCode in
// https://docs.aws.amazon.com/iot/latest/developerguide/jobs-comm-error-codes.html ...
// see JobsCode) and the REST exception names otherwise; the API maps each code
// to its REST exception (RESTException) and the broker to its Jobs MQTT code
// (JobsCode).
type Code string

// Error codes.
const (
	CodeNotFound               Code = "ResourceNotFound"
	CodeAlreadyExists          Code = "ResourceAlreadyExists"
	CodeInvalidRequest         Code = "InvalidRequest"
	CodeInvalidStateTransition Code = "InvalidStateTransition"
	CodeTerminalStateReached   Code = "TerminalStateReached"
	CodeVersionMismatch        Code = "VersionMismatch" // job execution expectedVersion (Jobs API)
	CodeVersionConflict        Code = "VersionConflict" // thing / thing group expectedVersion (control plane)
	CodeCertificateState       Code = "CertificateState"
	CodeCertificateValidation  Code = "CertificateValidation"
	CodeRegistrationCode       Code = "RegistrationCodeValidation"
	CodeDeleteConflict         Code = "DeleteConflict"
	CodeMalformedPolicy        Code = "MalformedPolicy"
	CodeLimitExceeded          Code = "LimitExceeded"
	CodeConflict               Code = "Conflict"
	CodeVersionsLimitExceeded  Code = "VersionsLimitExceeded"
	CodeInternal               Code = "InternalError"
)

// Error is a registry error with a code the API and the broker map to AWS's
// error names. Match with errors.Is against the Err* sentinels (compares the
// code) or errors.As to read the message.
type Error struct {
	Code     Code
	Resource string // what the error is about, e.g. "thing gw-1"
	Message  string
}

func (e *Error) Error() string {
	if e.Resource == "" || strings.Contains(e.Message, e.Resource) {
		return e.Message
	}
	if e.Message == "" {
		return e.Resource + ": " + string(e.Code)
	}
	return e.Resource + ": " + e.Message
}

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	var t *Error
	if errors.As(target, &t) {
		return t.Code == e.Code
	}
	return false
}

// Sentinels for errors.Is.
var (
	ErrNotFound               = &Error{Code: CodeNotFound, Message: "not found"}
	ErrAlreadyExists          = &Error{Code: CodeAlreadyExists, Message: "already exists"}
	ErrInvalidRequest         = &Error{Code: CodeInvalidRequest, Message: "invalid request"}
	ErrInvalidStateTransition = &Error{Code: CodeInvalidStateTransition, Message: "invalid state transition"}
	ErrTerminalStateReached   = &Error{Code: CodeTerminalStateReached, Message: "terminal state reached"}
	ErrVersionMismatch        = &Error{Code: CodeVersionMismatch, Message: "version mismatch"}
	ErrVersionConflict        = &Error{Code: CodeVersionConflict, Message: "version conflict"}
	ErrCertificateState       = &Error{Code: CodeCertificateState, Message: "certificate state"}
	ErrCertificateValidation  = &Error{Code: CodeCertificateValidation, Message: "certificate validation"}
	ErrRegistrationCode       = &Error{Code: CodeRegistrationCode, Message: "registration code validation"}
	ErrDeleteConflict         = &Error{Code: CodeDeleteConflict, Message: "delete conflict"}
	ErrMalformedPolicy        = &Error{Code: CodeMalformedPolicy, Message: "malformed policy"}
	ErrLimitExceeded          = &Error{Code: CodeLimitExceeded, Message: "limit exceeded"}
)

func newErr(code Code, resource, format string, args ...any) *Error {
	return &Error{Code: code, Resource: resource, Message: fmt.Sprintf(format, args...)}
}

func notFound(kind, name string) *Error {
	return &Error{Code: CodeNotFound, Resource: kind + " " + name, Message: kind + " " + name + " does not exist"}
}

func invalid(resource, format string, args ...any) *Error {
	return newErr(CodeInvalidRequest, resource, format, args...)
}

// CodeOf returns the code of err, CodeInternal for errors not from here.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// JobsCode maps err to the AWS IoT Jobs MQTT error code
// (https://docs.aws.amazon.com/iot/latest/developerguide/jobs-api.html#jobs-mqtt-error-response,
// "ErrorCode": InvalidTopic, InvalidJson, InvalidRequest,
// InvalidStateTransition, ResourceNotFound, VersionMismatch, InternalError,
// RequestThrottled, TerminalStateReached).
func JobsCode(err error) protocol.JobsErrorCode {
	switch CodeOf(err) {
	case CodeNotFound:
		return protocol.JobsResourceNotFound
	case CodeInvalidStateTransition:
		return protocol.JobsInvalidStateTransition
	case CodeTerminalStateReached:
		return protocol.JobsTerminalStateReached
	case CodeVersionMismatch:
		return protocol.JobsVersionMismatch
	case CodeInternal:
		return protocol.JobsInternalError
	default:
		return protocol.JobsInvalidRequest
	}
}

// RESTException maps err to the AWS IoT control-plane exception name and
// HTTP status the SDK decodes (service/iot deserializers).
func RESTException(err error) (name string, status int) {
	switch CodeOf(err) {
	case CodeNotFound:
		return "ResourceNotFoundException", 404
	case CodeAlreadyExists:
		return "ResourceAlreadyExistsException", 409
	case CodeInvalidRequest:
		return "InvalidRequestException", 400
	case CodeInvalidStateTransition, CodeTerminalStateReached:
		return "InvalidStateTransitionException", 409
	case CodeVersionMismatch, CodeVersionConflict:
		return "VersionConflictException", 409
	case CodeCertificateState:
		return "CertificateStateException", 406
	case CodeCertificateValidation:
		return "CertificateValidationException", 400
	case CodeRegistrationCode:
		return "RegistrationCodeValidationException", 400
	case CodeDeleteConflict:
		return "DeleteConflictException", 409
	case CodeMalformedPolicy:
		return "MalformedPolicyException", 400
	case CodeLimitExceeded:
		return "LimitExceededException", 410
	case CodeConflict:
		return "ConflictException", 409
	case CodeVersionsLimitExceeded:
		return "VersionsLimitExceededException", 409
	default:
		return "InternalFailureException", 500
	}
}
