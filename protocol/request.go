package protocol

// Device-initiated rotation (issue 10, "device-side safety net"): when the
// operational certificate passes the configured share of its life or of the
// fleet's maximum age and no rotation job has come, bootcertd asks for one on
// RotateTopic. The cloud answers on RotateTopic + "/accepted" (a rotation is
// queued, or already pending) or "/rejected" (Rejected, e.g. Throttled with
// Retryable, or RecoveryBudgetExhausted).
//
// Every topic bootcertd publishes or subscribes to for bootcert lives under
// TopicNamespace (the policies grant only that namespace, for the thing
// itself); ParseJobDocument refuses job documents that name anything else.

// TopicNamespace is the prefix of every bootcert device topic, before
// {thingName} is expanded.
const TopicNamespace = "certificates/{thingName}/"

// OpGet, OpAck and OpRotate are the last part of the device's request topics
// (the rule's topic(3)).
const (
	OpGet    = "get"
	OpAck    = "ack"
	OpRotate = "rotate"
)

// RequestTopic is certificates/{thing}/{op}.
func RequestTopic(thing, op string) string { return "certificates/" + thing + "/" + op }

// RotateTopic is the topic a device asks for a rotation on.
func RotateTopic(thing string) string { return RequestTopic(thing, OpRotate) }

// RotateRequest asks the cloud to queue a rotation for the publishing thing.
// The thing comes from the topic the broker authorised, never from the payload.
type RotateRequest struct {
	ClientToken string `json:"clientToken"`
	// Reason is why the device asks: "age" (past the fleet's maximum age
	// share), "expiry" (past the share of notAfter), "operator"
	// (bootcertctl rotate).
	Reason string `json:"reason"`
	// CertificateID is the certificate the device is connected with.
	CertificateID string `json:"certificateId,omitempty"`
}

// RotateAccepted says a rotation is queued (or was already pending) for the
// thing; the job arrives through the Jobs API as usual.
type RotateAccepted struct {
	ClientToken string `json:"clientToken"`
	JobID       string `json:"jobId,omitempty"`
}

// Rejection codes of the lifecycle (issue 10).
const (
	// RecoveryBudgetExhausted: the device has used its automatic recoveries;
	// an operator must raise the budget.
	RecoveryBudgetExhausted Code = "RECOVERY_BUDGET_EXHAUSTED"
	// Decommissioned: the device was decommissioned and is never admitted again.
	Decommissioned Code = "DECOMMISSIONED"
)
