package protocol

// ResultRolledBack is the Result bootcertd records for a rotation it undid
// (the new certificate was refused, or its acknowledgement rejected): the
// previous credential is active again. The Jobs API never sees it: the job
// execution is reported FAILED with the reason.
const ResultRolledBack Result = "ROLLED_BACK"
