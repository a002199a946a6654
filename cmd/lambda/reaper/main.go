// Command reaper is the bootcert reaper Lambda function (provided.al2023;
// build with `make lambdas`).
package main

import (
	"github.com/bootcert/bootcert/cloud"
	"github.com/bootcert/bootcert/cloud/lambdarun"
)

func main() { lambdarun.Main(cloud.Reaper) }
