package protocol

import (
	"strconv"
	"strings"
	"time"
)

// The AWS IoT fleet provisioning device MQTT API ("Device provisioning MQTT
// API", https://docs.aws.amazon.com/iot/latest/developerguide/fleet-provision-api.html),
// as bootcertd speaks it in fleet-provisioning mode and the lab serves it:
//
//	$aws/certificates/create-from-csr/json                        CreateCertificateFromCsr
//	$aws/certificates/create/json                                 CreateKeysAndCertificate
//	$aws/provisioning-templates/{templateName}/provision/json     RegisterThing
//
// each answered on its topic + "/accepted" or "/rejected", only to the
// connection that published the request ("IoT Core Fleet Provisioning
// returns the device provisioning MQTT API results through the same MQTT
// connection used to publish the API request"). bootcert uses the json
// payload format only (the API also has a cbor one).
const (
	TopicCreateFromCSR = "$aws/certificates/create-from-csr/json"
	TopicCreateKeys    = "$aws/certificates/create/json"
	// OwnershipTokenLifetime: "For security, the certificateOwnershipToken
	// returned by CreateCertificateFromCsr expires after one hour.
	// RegisterThing must be called before the certificateOwnershipToken
	// expires." (fleet-provision-api.html).
	OwnershipTokenLifetime = time.Hour
	// ProvisioningHookTimeout: "The Lambda function must finish running and
	// return within 5 seconds, otherwise the provisioning request fails."
	// (https://docs.aws.amazon.com/iot/latest/developerguide/pre-provisioning-hook.html).
	ProvisioningHookTimeout = 5 * time.Second
)

// ProvisionTopic is RegisterThing's request topic for a template.
func ProvisionTopic(template string) string {
	return "$aws/provisioning-templates/" + template + "/provision/json"
}

// ParseProvisionTopic returns the template name of a RegisterThing request
// topic (not of its replies).
func ParseProvisionTopic(topic string) (template string, ok bool) {
	rest, ok := strings.CutPrefix(topic, "$aws/provisioning-templates/")
	if !ok {
		return "", false
	}
	template, ok = strings.CutSuffix(rest, "/provision/json")
	if !ok || template == "" || strings.Contains(template, "/") {
		return "", false
	}
	return template, true
}

// CreateCertificateFromCSRRequest is CreateCertificateFromCsr's request.
type CreateCertificateFromCSRRequest struct {
	CertificateSigningRequest string `json:"certificateSigningRequest"`
}

// CreateCertificateFromCSRResponse is CreateCertificateFromCsr's
// .../accepted payload.
type CreateCertificateFromCSRResponse struct {
	CertificateOwnershipToken string `json:"certificateOwnershipToken"`
	CertificateID             string `json:"certificateId"`
	CertificatePEM            string `json:"certificatePem"`
}

// CreateKeysAndCertificateResponse is CreateKeysAndCertificate's
// .../accepted payload (the key is made by AWS: bootcertd never uses it).
type CreateKeysAndCertificateResponse struct {
	CertificateID             string `json:"certificateId"`
	CertificatePEM            string `json:"certificatePem"`
	PrivateKey                string `json:"privateKey"`
	CertificateOwnershipToken string `json:"certificateOwnershipToken"`
}

// RegisterThingRequest is RegisterThing's request.
type RegisterThingRequest struct {
	CertificateOwnershipToken string            `json:"certificateOwnershipToken"`
	Parameters                map[string]string `json:"parameters,omitempty"`
}

// RegisterThingResponse is RegisterThing's .../accepted payload.
type RegisterThingResponse struct {
	DeviceConfiguration map[string]string `json:"deviceConfiguration"`
	ThingName           string            `json:"thingName"`
}

// ProvisioningError is the .../rejected payload of every fleet provisioning
// operation: {"statusCode", "errorCode", "errorMessage"}.
type ProvisioningError struct {
	StatusCode   int    `json:"statusCode"`
	ErrorCode    string `json:"errorCode"`
	ErrorMessage string `json:"errorMessage"`
}

func (e *ProvisioningError) Error() string {
	return e.ErrorCode + " (" + strconv.Itoa(e.StatusCode) + "): " + e.ErrorMessage
}

// Fleet provisioning error codes the lab answers with. A refusal by the
// pre-provisioning hook, and a hook that fails or times out, is
// ACCESS_DENIED as the hook page says ("If the Lambda function fails, the
// provisioning request fails with ACCESS_DENIED"); the others follow the
// statusCode/errorCode shape of fleet-provision-api.html.
const (
	ProvisioningAccessDenied     = "AccessDenied"
	ProvisioningInvalidRequest   = "InvalidRequest"
	ProvisioningInvalidToken     = "InvalidCertificateOwnershipToken"
	ProvisioningTemplateNotFound = "ResourceNotFound"
	ProvisioningThrottled        = "Throttled"
	ProvisioningInternalFailure  = "InternalFailure"
)

// Fleet provisioning template parameters bootcert's template declares.
const (
	// ParamSerialNumber names the thing: the device's serial number as the
	// factory recorded it on the allow list.
	ParamSerialNumber = "SerialNumber"
	// ParamKeySHA256 is set by the pre-provisioning hook (parameterOverrides),
	// never by the device: the lower-hex SHA-256 of the new certificate's
	// SubjectPublicKeyInfo, recorded on the thing to bind its name to the
	// key made in the device's hardware.
	ParamKeySHA256 = "KeySHA256"
)
