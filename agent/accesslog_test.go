package agent

import "testing"

// TestLogAccess: which connections get an access line, with the log on, off and sampled.
func TestLogAccess(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		result string
		want   bool
	}{
		{"on by default", Config{}, "ok", true},
		{"off", Config{AccessLogOff: true}, "denied", false},
		{"a sample of 0 means every line", Config{AccessLogSample: 0}, "ok", true},
		{"a refusal is always logged when sampling", Config{AccessLogSample: 1e-9}, "denied", true},
		{"an ok one is almost never at 1e-9", Config{AccessLogSample: 1e-9}, "ok", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &Agent{cfg: tt.cfg}
			if got := a.logAccess(tt.result); got != tt.want {
				t.Errorf("logAccess(%q) = %v, want %v", tt.result, got, tt.want)
			}
		})
	}
}
