package kube

import (
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// errNotBuiltIn: the resource is not one the protobuf client serves (a CRD).
var errNotBuiltIn = errors.New("not a built-in resource of the protobuf client")

// protobufScheme knows the two API groups the Source reads built-in objects of, and nothing
// else (not client-go's scheme, which would link every API group in).
var protobufScheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := errors.Join(corev1.AddToScheme(s), discoveryv1.AddToScheme(s)); err != nil {
		panic(err)
	}
	return s
}()

// protobufListWatch lists and watches gvr (a core/v1 or discovery/v1 resource) in protobuf, and
// returns the typed object its informer holds (pods: a podInfo, see podWire).
func protobufListWatch(rc *rest.Config, gvr schema.GroupVersionResource) (cache.ListerWatcher, runtime.Object, error) {
	var obj runtime.Object
	var ns runtime.NegotiatedSerializer = serializer.NewCodecFactory(protobufScheme).WithoutConversion()
	switch gvr {
	case podsResource:
		obj, ns = &podInfo{}, podSerializer{ns} // podWire: pods decoded straight into podInfos
	case namespacesResource:
		obj = &corev1.Namespace{}
	case servicesResource:
		obj = &corev1.Service{}
	case endpointSlicesResource:
		obj = &discoveryv1.EndpointSlice{}
	default:
		return nil, nil, errNotBuiltIn
	}
	cfg := rest.CopyConfig(rc)
	gv := gvr.GroupVersion()
	cfg.GroupVersion = &gv
	cfg.APIPath = "/apis"
	if gv.Group == "" {
		cfg.APIPath = "/api"
	}
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	cfg.NegotiatedSerializer = ns
	// Watch events are one object each: gzip saves little on the wire and cost the agent a
	// seventh of its CPU on a pod's change (perf, bench/scale).
	cfg.DisableCompression = true
	client, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("workload: %s client: %w", gvr.Resource, err)
	}
	return cache.NewListWatchFromClient(client, gvr.Resource, "", fields.Everything()), obj, nil
}
