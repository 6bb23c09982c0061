package waypoint

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/amesh-dev/amesh/workload"
)

func TestMatch(t *testing.T) {
	be := func(s string) []workload.RouteBackend {
		return []workload.RouteBackend{{Service: s, Port: 80, Weight: 1}}
	}
	routes := []workload.Route{
		{Name: "a", Namespace: "shop", Rules: []workload.RouteRule{
			{Matches: []workload.RouteMatch{{Path: "/api"}}, Backends: be("prefix-api")},
			{Matches: []workload.RouteMatch{{PathType: workload.PathExact, Path: "/api/v1"}}, Backends: be("exact")},
			{Matches: []workload.RouteMatch{{Path: "/api/v1/"}}, Backends: be("longer-prefix")},
			{Matches: []workload.RouteMatch{{Path: "/api", Method: "POST"}}, Backends: be("post")},
			{Matches: []workload.RouteMatch{{Path: "/api", Headers: []workload.HeaderMatch{{Name: "X-Canary", Value: "1"}}}}, Backends: be("canary")},
		}},
		{Name: "b", Namespace: "shop", Rules: []workload.RouteRule{
			{Backends: be("default")}, // no match: every request
		}},
	}
	for _, tc := range []struct {
		method, path string
		header       http.Header
		want         string
	}{
		{"GET", "/api/v1", nil, "exact"},
		{"GET", "/api/v1/x", nil, "longer-prefix"},
		{"GET", "/api/x", nil, "prefix-api"},
		{"GET", "/api", nil, "prefix-api"},
		{"GET", "/apix", nil, "default"}, // a prefix matches whole segments
		{"POST", "/api/x", nil, "post"},
		{"GET", "/api/x", http.Header{"X-Canary": {"1"}}, "canary"},
		{"GET", "/api/x", http.Header{"X-Canary": {"2"}}, "prefix-api"},
		{"GET", "/", nil, "default"},
	} {
		r := httptest.NewRequest(tc.method, tc.path, nil)
		for k, v := range tc.header {
			r.Header[k] = v
		}
		rule, key, ok := match(routes, r)
		if !ok || rule.Backends[0].Service != tc.want {
			t.Errorf("%s %s %v: rule %s (%v), want %s", tc.method, tc.path, tc.header, key, ok, tc.want)
		}
	}
	if _, _, ok := match(routes[:1], httptest.NewRequest("GET", "/other", nil)); ok {
		t.Errorf("a request no rule matches matched")
	}
}

func TestWeighted(t *testing.T) {
	for _, tc := range []struct {
		weights []int32
		n       int
		want    []int
	}{
		{[]int32{80, 20}, 1000, []int{800, 200}},
		{[]int32{1, 1, 1}, 999, []int{333, 333, 333}},
		{[]int32{0, 5}, 10, []int{0, 10}},
		{[]int32{3, 0, 1}, 8, []int{6, 0, 2}},
	} {
		var w weighted
		var backends []workload.RouteBackend
		for i, wt := range tc.weights {
			backends = append(backends, workload.RouteBackend{Service: string(rune('a' + i)), Weight: wt})
		}
		got := make([]int, len(backends))
		for range tc.n {
			b, ok := w.pick("r", backends)
			if !ok {
				t.Fatal("no backend picked")
			}
			got[b.Service[0]-'a']++
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("weights %v over %d: %v, want %v", tc.weights, tc.n, got, tc.want)
				break
			}
		}
	}
	var w weighted
	if _, ok := w.pick("r", []workload.RouteBackend{{Weight: 0}}); ok {
		t.Errorf("every weight 0: picked one")
	}
}
