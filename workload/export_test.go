package workload

// Test helpers of state_test.go, for the external tests (lookup_test.go).
var (
	UIDs  = uids
	UIDOf = uidOf
)
