package registry

import (
	"time"

	"github.com/bootcert/bootcert/protocol"
)

// Certificate and CA statuses (AWS IoT CertificateStatus / CACertificateStatus).
const (
	StatusActive            = "ACTIVE"
	StatusInactive          = "INACTIVE"
	StatusRevoked           = "REVOKED"
	StatusPendingActivation = "PENDING_ACTIVATION"
	StatusPendingTransfer   = "PENDING_TRANSFER"
	StatusRegisterInactive  = "REGISTER_INACTIVE"

	AutoRegistrationEnable  = "ENABLE"
	AutoRegistrationDisable = "DISABLE"

	CertificateModeDefault = "DEFAULT"
	CertificateModeSNIOnly = "SNI_ONLY"
)

// Job statuses (a job's, not an execution's: API_Job "status"; execution
// statuses are protocol.JobStatus).
const (
	JobInProgress = "IN_PROGRESS"
	JobCanceled   = "CANCELED"
	JobCompleted  = "COMPLETED"

	TargetContinuous = "CONTINUOUS"
	TargetSnapshot   = "SNAPSHOT"
)

// CACertificate is a registered CA.
type CACertificate struct {
	ID                     string    `json:"certificateId"`
	ARN                    string    `json:"certificateArn"`
	PEM                    string    `json:"certificatePem"`
	Status                 string    `json:"status"`
	AutoRegistrationStatus string    `json:"autoRegistrationStatus"`
	CertificateMode        string    `json:"certificateMode"`
	OwnedBy                string    `json:"ownedBy"`
	CreationDate           time.Time `json:"creationDate"`
	LastModifiedDate       time.Time `json:"lastModifiedDate"`
	NotBefore              time.Time `json:"notBefore"`
	NotAfter               time.Time `json:"notAfter"`
	Subject                string    `json:"subject"`
	GenerationID           string    `json:"generationId"`
}

// Certificate is a device certificate.
type Certificate struct {
	ID               string    `json:"certificateId"`
	ARN              string    `json:"certificateArn"`
	PEM              string    `json:"certificatePem"`
	Status           string    `json:"status"`
	CACertificateID  string    `json:"caCertificateId,omitempty"`
	CertificateMode  string    `json:"certificateMode"`
	OwnedBy          string    `json:"ownedBy"`
	CreationDate     time.Time `json:"creationDate"`
	LastModifiedDate time.Time `json:"lastModifiedDate"`
	NotBefore        time.Time `json:"notBefore"`
	NotAfter         time.Time `json:"notAfter"`
	Subject          string    `json:"subject"`
	GenerationID     string    `json:"generationId"`
}

// Thing is an IoT thing.
type Thing struct {
	Name       string            `json:"thingName"`
	ARN        string            `json:"thingArn"`
	ID         string            `json:"thingId"`
	TypeName   string            `json:"thingTypeName,omitempty"`
	Attributes map[string]string `json:"attributes"`
	Version    int64             `json:"version"`
	Created    time.Time         `json:"creationDate"`
}

// ThingType is a thing type.
type ThingType struct {
	Name                 string    `json:"thingTypeName"`
	ARN                  string    `json:"thingTypeArn"`
	ID                   string    `json:"thingTypeId"`
	Description          string    `json:"thingTypeDescription,omitempty"`
	SearchableAttributes []string  `json:"searchableAttributes,omitempty"`
	Deprecated           bool      `json:"deprecated"`
	CreationDate         time.Time `json:"creationDate"`
}

// ThingGroup is a static thing group.
type ThingGroup struct {
	Name             string            `json:"thingGroupName"`
	ARN              string            `json:"thingGroupArn"`
	ID               string            `json:"thingGroupId"`
	Description      string            `json:"thingGroupDescription,omitempty"`
	Attributes       map[string]string `json:"attributes,omitempty"`
	ParentGroupName  string            `json:"parentGroupName,omitempty"`
	Version          int64             `json:"version"`
	CreationDate     time.Time         `json:"creationDate"`
	LastModifiedDate time.Time         `json:"lastModifiedDate"`
}

// Policy is an IoT policy. Document is the default version's document.
type Policy struct {
	Name             string          `json:"policyName"`
	ARN              string          `json:"policyArn"`
	Document         string          `json:"policyDocument"`
	DefaultVersionID string          `json:"defaultVersionId"`
	Versions         []PolicyVersion `json:"versions,omitempty"`
	CreationDate     time.Time       `json:"creationDate"`
	LastModifiedDate time.Time       `json:"lastModifiedDate"`
	GenerationID     string          `json:"generationId"`
}

// PolicyVersion is one version of a policy.
type PolicyVersion struct {
	ID         string    `json:"versionId"`
	Document   string    `json:"document"`
	CreateDate time.Time `json:"createDate"`
}

// Job is an IoT job targeting thing groups (or things).
type Job struct {
	ID                         string    `json:"jobId"`
	ARN                        string    `json:"jobArn"`
	Description                string    `json:"description,omitempty"`
	Document                   string    `json:"document"`
	Targets                    []string  `json:"targets"`
	TargetSelection            string    `json:"targetSelection"`
	Status                     string    `json:"status"`
	InProgressTimeoutInMinutes int64     `json:"inProgressTimeoutInMinutes,omitempty"`
	CreatedAt                  time.Time `json:"createdAt"`
	LastUpdatedAt              time.Time `json:"lastUpdatedAt"`
	CompletedAt                time.Time `json:"completedAt,omitzero"`
	ForceCanceled              bool      `json:"forceCanceled,omitempty"`
	Comment                    string    `json:"comment,omitempty"`
	ReasonCode                 string    `json:"reasonCode,omitempty"`
	// Rollout and abort configurations (CreateJob's
	// jobExecutionsRolloutConfig.maximumPerMinute and abortConfig).
	MaxPerMinute int             `json:"maximumPerMinute,omitempty"`
	Abort        []AbortCriteria `json:"abortCriteria,omitempty"`
	// Held are targets whose execution waits for the rollout rate;
	// Notified the times of the last minute's notifications.
	Held     []string    `json:"held,omitempty"`
	Notified []time.Time `json:"notified,omitempty"`
}

// AbortCriteria is one of CreateJob's abortConfig.criteriaList: the job is
// canceled when, of at least MinExecuted executions that ended, Threshold
// percent ended with FailureType (FAILED, REJECTED, TIMED_OUT or ALL of them).
type AbortCriteria struct {
	FailureType string  `json:"failureType"`
	Action      string  `json:"action"`
	Threshold   float64 `json:"thresholdPercentage"`
	MinExecuted int     `json:"minNumberOfExecutedThings"`
}

// JobExecution is one thing's execution of a job.
type JobExecution struct {
	JobID           string             `json:"jobId"`
	ThingName       string             `json:"thingName"`
	ThingARN        string             `json:"thingArn"`
	Status          protocol.JobStatus `json:"status"`
	StatusDetails   map[string]string  `json:"statusDetails,omitempty"`
	QueuedAt        time.Time          `json:"queuedAt"`
	StartedAt       time.Time          `json:"startedAt,omitzero"`
	LastUpdatedAt   time.Time          `json:"lastUpdatedAt"`
	VersionNumber   int64              `json:"versionNumber"`
	ExecutionNumber int64              `json:"executionNumber"`
	// StepTimeoutAt is when an IN_PROGRESS execution times out because of
	// its step timeout (zero: none).
	StepTimeoutAt time.Time `json:"stepTimeoutAt,omitzero"`
	// InProgressTimeoutAt is when it times out because of the job's
	// inProgressTimeoutInMinutes (zero: none).
	InProgressTimeoutAt time.Time `json:"inProgressTimeoutAt,omitzero"`
	ForceCanceled       bool      `json:"forceCanceled,omitempty"`
}

// TimeoutAt is the earlier of the step and in-progress deadlines (zero if
// neither applies).
func (e JobExecution) TimeoutAt() time.Time {
	a, b := e.StepTimeoutAt, e.InProgressTimeoutAt
	switch {
	case a.IsZero():
		return b
	case b.IsZero():
		return a
	case a.Before(b):
		return a
	}
	return b
}

// JobExecutionSummary is the short form in GetPendingJobExecutions
// (https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html).
type JobExecutionSummary struct {
	JobID           string    `json:"jobId"`
	QueuedAt        time.Time `json:"queuedAt"`
	StartedAt       time.Time `json:"startedAt,omitzero"`
	LastUpdatedAt   time.Time `json:"lastUpdatedAt"`
	VersionNumber   int64     `json:"versionNumber"`
	ExecutionNumber int64     `json:"executionNumber"`
}

// Summary returns the execution's summary.
func (e JobExecution) Summary() JobExecutionSummary {
	return JobExecutionSummary{JobID: e.JobID, QueuedAt: e.QueuedAt, StartedAt: e.StartedAt,
		LastUpdatedAt: e.LastUpdatedAt, VersionNumber: e.VersionNumber, ExecutionNumber: e.ExecutionNumber}
}

// Snapshot is a read-only copy of the whole registry (GET /lab/state).
type Snapshot struct {
	Region              string              `json:"region"`
	AccountID           string              `json:"accountId"`
	RegistrationCode    string              `json:"registrationCode"`
	CACertificates      []CACertificate     `json:"caCertificates"`
	Certificates        []Certificate       `json:"certificates"`
	Things              []Thing             `json:"things"`
	ThingTypes          []ThingType         `json:"thingTypes"`
	ThingGroups         []ThingGroup        `json:"thingGroups"`
	GroupMembers        map[string][]string `json:"groupMembers"`
	Policies            []Policy            `json:"policies"`
	PolicyTargets       map[string][]string `json:"policyTargets"`
	ThingPrincipals     map[string][]string `json:"thingPrincipals"`
	Jobs                []Job               `json:"jobs"`
	JobExecutions       []JobExecution      `json:"jobExecutions"`
	EventConfigurations map[string]bool     `json:"eventConfigurations"`
	Counts              map[string]int      `json:"counts"`
}
