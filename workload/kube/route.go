package kube

import (
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/amesh-dev/amesh/workload"
)

// HTTPRouteResource is Gateway API's HTTPRoute, whose GAMMA form (parentRefs of kind Service)
// routes a service's requests through its waypoint. The CRD is Gateway API's own (standard
// channel); when it is not installed the source has no routes.
var HTTPRouteResource = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}

// Route converts an HTTPRoute into the subset amesh's waypoints implement. ok is false, with no
// error, for a route that attaches to no Service (an ingress Gateway's, not the mesh's). A
// route that uses what amesh does not implement (filters, query or regular-expression
// matches, another namespace, a backend that is not a Service) is an error: it is left out
// whole, so that the service is served as if it had no route, rather than by half of one.
func Route(u *unstructured.Unstructured) (r workload.Route, ok bool, err error) {
	var hr gatewayv1.HTTPRoute
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &hr); err != nil {
		return workload.Route{}, false, fmt.Errorf("workload: HTTPRoute %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	r = workload.Route{Name: hr.Name, Namespace: hr.Namespace}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for i, p := range hr.Spec.ParentRefs {
		if p.Kind == nil || *p.Kind != "Service" || (p.Group != nil && *p.Group != "" && *p.Group != "core") {
			continue // a Gateway's: not the mesh's to serve
		}
		if p.Namespace != nil && string(*p.Namespace) != hr.Namespace {
			bad("parentRefs[%d]: a service of another namespace (%s) is not supported", i, *p.Namespace)
		}
		var port uint16
		if p.Port != nil {
			port = uint16(*p.Port)
		}
		r.Parents = append(r.Parents, workload.RouteParent{Service: string(p.Name), Port: port})
	}
	if len(r.Parents) == 0 {
		return workload.Route{}, false, nil
	}
	for i, rule := range hr.Spec.Rules {
		at := fmt.Sprintf("rules[%d]", i)
		var wr workload.RouteRule
		if len(rule.Filters) > 0 {
			bad("%s.filters: not supported", at)
		}
		if rule.Timeouts != nil && rule.Timeouts.Request != nil {
			d, err := time.ParseDuration(string(*rule.Timeouts.Request))
			if err != nil {
				bad("%s.timeouts.request: %w", at, err)
			}
			wr.Timeout = d
		}
		for m, match := range rule.Matches {
			mat := fmt.Sprintf("%s.matches[%d]", at, m)
			var wm workload.RouteMatch
			if match.Path != nil {
				switch t := match.Path.Type; {
				case t == nil || *t == gatewayv1.PathMatchPathPrefix:
				case *t == gatewayv1.PathMatchExact:
					wm.PathType = workload.PathExact
				default:
					bad("%s.path.type %s: not supported (PathPrefix, Exact)", mat, *t)
				}
				if match.Path.Value != nil {
					wm.Path = *match.Path.Value
				}
			}
			for h, hm := range match.Headers {
				if hm.Type != nil && *hm.Type != gatewayv1.HeaderMatchExact {
					bad("%s.headers[%d].type %s: not supported (Exact)", mat, h, *hm.Type)
				}
				wm.Headers = append(wm.Headers, workload.HeaderMatch{Name: string(hm.Name), Value: hm.Value})
			}
			if len(match.QueryParams) > 0 {
				bad("%s.queryParams: not supported", mat)
			}
			if match.Method != nil {
				wm.Method = string(*match.Method)
			}
			wr.Matches = append(wr.Matches, wm)
		}
		for b, be := range rule.BackendRefs {
			bat := fmt.Sprintf("%s.backendRefs[%d]", at, b)
			if len(be.Filters) > 0 {
				bad("%s.filters: not supported", bat)
			}
			if (be.Kind != nil && *be.Kind != "Service") || (be.Group != nil && *be.Group != "" && *be.Group != "core") {
				bad("%s: only a Service is supported", bat)
			}
			if be.Namespace != nil && string(*be.Namespace) != hr.Namespace {
				bad("%s: a service of another namespace is not supported", bat)
			}
			w := int32(1)
			if be.Weight != nil {
				w = *be.Weight
			}
			var port uint16
			if be.Port != nil {
				port = uint16(*be.Port)
			}
			wr.Backends = append(wr.Backends, workload.RouteBackend{Service: string(be.Name), Port: port, Weight: w})
		}
		r.Rules = append(r.Rules, wr)
	}
	if err := errors.Join(errs...); err != nil {
		return workload.Route{}, false, fmt.Errorf("workload: HTTPRoute %s/%s left out: %w", hr.Namespace, hr.Name, err)
	}
	return r, true, nil
}
