// Command provisionhook is the bootcert pre-provisioning hook Lambda function
// of the fleet provisioning template (provided.al2023; build with `make
// lambdas`).
package main

import (
	"github.com/bootcert/bootcert/cloud"
	"github.com/bootcert/bootcert/cloud/lambdarun"
)

func main() { lambdarun.Main(cloud.ProvisionHook) }
