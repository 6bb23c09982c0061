package kube

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/amesh-dev/amesh/workload"
)

func kroute(spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
		"metadata": map[string]any{"name": "r", "namespace": "shop"}, "spec": spec,
	}}
}

func TestRoute(t *testing.T) {
	svcParent := []any{map[string]any{"group": "", "kind": "Service", "name": "api", "port": int64(80)}}
	backends := []any{
		map[string]any{"name": "api-v1", "port": int64(80), "weight": int64(80)},
		map[string]any{"name": "api-v2", "port": int64(80)}, // weight 1 by default
	}
	for _, tc := range []struct {
		name    string
		spec    map[string]any
		want    workload.Route
		ok      bool
		wantErr string
	}{
		{
			name: "GAMMA route",
			spec: map[string]any{"parentRefs": svcParent, "rules": []any{map[string]any{
				"matches": []any{map[string]any{
					"path":    map[string]any{"type": "Exact", "value": "/login"},
					"headers": []any{map[string]any{"name": "x-canary", "value": "1"}},
					"method":  "POST",
				}},
				"backendRefs": backends,
				"timeouts":    map[string]any{"request": "2s"},
			}}},
			want: workload.Route{Name: "r", Namespace: "shop", Parents: []workload.RouteParent{{Service: "api", Port: 80}}, Rules: []workload.RouteRule{{
				Matches:  []workload.RouteMatch{{PathType: workload.PathExact, Path: "/login", Headers: []workload.HeaderMatch{{Name: "x-canary", Value: "1"}}, Method: "POST"}},
				Backends: []workload.RouteBackend{{Service: "api-v1", Port: 80, Weight: 80}, {Service: "api-v2", Port: 80, Weight: 1}},
				Timeout:  2 * time.Second,
			}}},
			ok: true,
		},
		{
			name: "a Gateway's route is not the mesh's",
			spec: map[string]any{"parentRefs": []any{map[string]any{"name": "ingress"}}, "rules": []any{map[string]any{"backendRefs": backends}}},
		},
		{
			name:    "filters",
			spec:    map[string]any{"parentRefs": svcParent, "rules": []any{map[string]any{"filters": []any{map[string]any{"type": "RequestMirror"}}, "backendRefs": backends}}},
			wantErr: "rules[0].filters: not supported",
		},
		{
			name:    "regular expression",
			spec:    map[string]any{"parentRefs": svcParent, "rules": []any{map[string]any{"matches": []any{map[string]any{"path": map[string]any{"type": "RegularExpression", "value": "/a.*"}}}, "backendRefs": backends}}},
			wantErr: "path.type RegularExpression: not supported",
		},
		{
			name:    "backend in another namespace",
			spec:    map[string]any{"parentRefs": svcParent, "rules": []any{map[string]any{"backendRefs": []any{map[string]any{"name": "x", "namespace": "bank", "port": int64(80)}}}}},
			wantErr: "another namespace",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, err := Route(kroute(tc.spec))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || ok {
					t.Fatalf("Route = %v, %v; want error %q", ok, err, tc.wantErr)
				}
				return
			}
			if err != nil || ok != tc.ok || (ok && !reflect.DeepEqual(got, tc.want)) {
				t.Errorf("Route = %+v, %v, %v; want %+v, %v", got, ok, err, tc.want, tc.ok)
			}
		})
	}
}
