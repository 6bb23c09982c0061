package adminapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

var dump = &ConfigDump{
	Workloads: []Workload{
		{Name: "web", Namespace: "shop", ServiceAccount: "web", Node: "n1", TrustDomain: "cluster.local", Protocol: "HBONE", WorkloadIPs: []string{"10.0.0.2"}},
		{Name: "api", Namespace: "shop", ServiceAccount: "api", Node: "n2", TrustDomain: "cluster.local", Protocol: "HBONE", WorkloadIPs: []string{"10.0.0.3"}},
	},
	Services: []Service{{Name: "api", Namespace: "shop", VIPs: []string{"Kubernetes/10.96.0.10"}, Ports: map[string]uint16{"80": 8080, "443": 8443}, Endpoints: []string{"shop/api"}}},
}

func TestWrite(t *testing.T) {
	tests := []struct {
		kind, format string
		want         []string
		err          string
	}{
		{"workloads", "table", []string{"NAMESPACE  NAME  IP        NODE  PROTOCOL  IDENTITY\nshop       api   10.0.0.3", "spiffe://cluster.local/ns/shop/sa/web"}, ""},
		{"services", "", []string{"443->8443,80->8080", "Kubernetes/10.96.0.10"}, ""},
		{"workloads", "json", []string{`"workloadIps": [`}, ""},
		{"services", "yaml", []string{"hostname: \"\"", "vips:"}, ""},
		{"workloads", "xml", nil, "want table, json or yaml"},
		{"pods", "table", nil, "unknown list"},
	}
	for _, tt := range tests {
		t.Run(tt.kind+" "+tt.format, func(t *testing.T) {
			var b bytes.Buffer
			err := Write(&b, dump, tt.kind, tt.format)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, b.String())
				}
			}
		})
	}
}

func TestClient(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/config_dump":
			json.NewEncoder(w).Encode(dump)
		case "/logging":
			if r.Method == http.MethodPost && r.URL.Query().Get("level") == "bogus" {
				http.Error(w, "level: bogus", http.StatusBadRequest)
				return
			}
			w.Write([]byte("current log level is INFO\n"))
		}
	}))
	defer srv.Close()
	c := &Client{Addr: strings.TrimPrefix(srv.URL, "http://")}
	d, err := c.ConfigDump(context.Background())
	if err != nil || len(d.Workloads) != 2 {
		t.Fatalf("ConfigDump: %v, %+v", err, d)
	}
	if lvl, err := c.LogLevel(context.Background(), ""); err != nil || lvl != "current log level is INFO" {
		t.Errorf("LogLevel: %q, %v", lvl, err)
	}
	if _, err := c.LogLevel(context.Background(), "bogus"); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("LogLevel(bogus): %v, want the agent's 400", err)
	}
	srv.Close()
	if _, err := c.ConfigDump(context.Background()); err == nil || !strings.Contains(err.Error(), "cannot reach the agent's admin API") {
		t.Errorf("with the agent gone: %v", err)
	}
}
