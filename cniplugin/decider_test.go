package cniplugin

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestKubeDecider asks a fake API server (the two metadata GETs, over HTTP) through the real
// client built from a kubeconfig file.
func TestKubeDecider(t *testing.T) {
	api := &fakeAPI{
		nsLabels: map[string]map[string]string{
			"shop":  {DataplaneModeLabel: ModeAmbient},
			"plain": {"team": "x"},
			"other": {DataplaneModeLabel: "sidecar"},
		},
		podLabels: map[string]map[string]string{
			"shop/web":    {"app": "web"},
			"shop/legacy": {DataplaneModeLabel: ModeNone},
			"plain/web":   {DataplaneModeLabel: ModeAmbient}, // a pod label opts in, as the agent's rule
			"plain/app":   {"app": "x"},
		},
	}
	srv := httptest.NewServer(api)
	defer srv.Close()
	d, err := NewKubeDecider(writeTestKubeconfig(t, srv.URL), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		ns, name   string
		failing    bool
		wantMesh   bool
		wantReason string
		wantErr    string
	}{
		{ns: "shop", name: "web", wantMesh: true, wantReason: "namespace shop has amesh.io/dataplane-mode=ambient"},
		{ns: "shop", name: "legacy", wantReason: "pod shop/legacy has amesh.io/dataplane-mode=none"},
		{ns: "shop", name: "gone", wantMesh: true, wantReason: "namespace shop has amesh.io/dataplane-mode=ambient; the pod is not found"},
		{ns: "plain", name: "web", wantMesh: true, wantReason: "pod plain/web has amesh.io/dataplane-mode=ambient"},
		{ns: "plain", name: "app", wantReason: "namespace plain is not labelled amesh.io/dataplane-mode=ambient"},
		{ns: "other", name: "web", wantReason: "namespace other is not labelled amesh.io/dataplane-mode=ambient; the pod is not found"},
		{ns: "nowhere", name: "web", wantErr: "cniplugin: get namespace nowhere: "},
		{ns: "shop", name: "web", failing: true, wantErr: "cniplugin: get namespace shop: "},
	} {
		api.mu.Lock()
		api.failing = tt.failing
		api.mu.Unlock()
		inMesh, reason, err := d.InMesh(context.Background(), tt.ns, tt.name)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("InMesh(%s/%s) = %v, %q, %v; want error %q", tt.ns, tt.name, inMesh, reason, err, tt.wantErr)
			}
			continue
		}
		if err != nil || inMesh != tt.wantMesh || reason != tt.wantReason {
			t.Errorf("InMesh(%s/%s) = %v, %q, %v; want %v, %q", tt.ns, tt.name, inMesh, reason, err, tt.wantMesh, tt.wantReason)
		}
	}

	// An API server nobody serves: an error, within the timeout.
	srv.Close()
	start := time.Now()
	if _, _, err := d.InMesh(context.Background(), "shop", "web"); err == nil || !strings.Contains(err.Error(), "connect: connection refused") {
		t.Errorf("InMesh with the API server down = %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("InMesh with the API server down took %v", time.Since(start))
	}

	if _, err := NewKubeDecider("", time.Second); err == nil || !strings.Contains(err.Error(), "no kubeconfig configured") {
		t.Errorf("NewKubeDecider without kubeconfig = %v", err)
	}
	if _, err := NewKubeDecider("/nonexistent/kubeconfig", time.Second); err == nil || !strings.Contains(err.Error(), "cniplugin: load kubeconfig /nonexistent/kubeconfig") {
		t.Errorf("NewKubeDecider with a missing file = %v", err)
	}
}
