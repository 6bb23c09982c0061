package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/amesh-dev/amesh/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// AuthorizationPolicyResource is the AuthorizationPolicy CRD's resource (deploy/crd.yaml).
var AuthorizationPolicyResource = schema.GroupVersionResource{Group: "security.amesh.io", Version: "v1", Resource: "authorizationpolicies"}

// Source feeds a workload.Store from the Kubernetes API server: shared informers (resync off) on
// Namespaces, Pods, Services, EndpointSlices and AuthorizationPolicies, which cache only what
// the agent reads of each object. The first State is built from every object (Spec, then
// workload.NewState); after that each burst of events (coalesced) derives the next State from
// the objects it changed (tracker, workload.State.Apply), so a pod's change costs that pod and
// the services it is in, not the cluster. A namespace's change, an HTTPRoute's, pod IPs from the
// CNI plugin and conflicts only the whole can settle (two pods claiming one IP) build in full.
// Informers keep their cache across API server restarts and resync when it is back, so the
// agent goes on serving from the last State meanwhile. Create one, call Start, then Run.
type Source struct {
	// Dynamic reaches the API server. Only the dynamic client is used, with the typed objects
	// made from what it returns: client-go's typed clientset and informer factory link in every
	// API group of Kubernetes, which tripled the agent's resident memory.
	Dynamic dynamic.Interface
	// Protobuf, when set, is the client configuration Pods, Namespaces, Services and
	// EndpointSlices are listed and watched with, in protobuf, straight into their typed form
	// (a REST client of those two API groups only): decoding a pod's JSON into a map and
	// converting it cost the agent more CPU than everything else it does on a pod's change.
	// AuthorizationPolicies and HTTPRoutes (CRDs, JSON only) always use Dynamic.
	Protobuf *rest.Config
	// TrustDomain of the SPIFFE IDs; RootNamespace holds mesh-wide policies (policy default when
	// empty).
	TrustDomain   spiffeid.TrustDomain
	RootNamespace string
	// Debounce is how long after an event the State is rebuilt, so that a burst makes one State;
	// DefaultDebounce when zero.
	Debounce time.Duration
	// SyncTimeout bounds Start's wait for the caches; a minute when zero.
	SyncTimeout time.Duration
	Logger      *slog.Logger
	// PodIPs, when set, returns the pod IPs the agent learnt from the CNI plugin (Objects.PodIPs);
	// call Refresh when they change.
	PodIPs func() map[string][]netip.Addr
	// WatchRoutes adds Gateway API's HTTPRoutes to the state, where that CRD is installed:
	// a waypoint needs them; a node agent does not (and its role may not read them).
	WatchRoutes bool

	stores     informerView // the informers' caches
	changed    chan struct{}
	urgent     chan struct{}
	problems   atomic.Int64
	rejected   atomic.Uint64
	watchErrs  atomic.Uint64
	fullBuilds atomic.Uint64
	incrBuilds atomic.Uint64
	lastReport string

	mu      sync.Mutex
	pending changes // since the last build
	// Used by Start, then by Run's goroutine only:
	tr      tracker
	lastIPs map[string][]netip.Addr // PodIPs as of the last build
}

// Start starts the informers, which run until ctx is done, and returns the first State once
// every cache has synced, waiting at most SyncTimeout. A missing AuthorizationPolicy CRD is an
// error: without it the agent could not see the policies it must enforce.
func (k *Source) Start(ctx context.Context) (*workload.State, error) {
	if k.Dynamic == nil {
		return nil, errors.New("workload: kubernetes source needs a dynamic client")
	}
	if k.Logger == nil {
		k.Logger = slog.New(slog.DiscardHandler)
	}
	if k.Debounce <= 0 {
		k.Debounce = DefaultDebounce
	}
	if k.SyncTimeout <= 0 {
		k.SyncTimeout = time.Minute
	}
	syncCtx, cancel := context.WithTimeout(ctx, k.SyncTimeout)
	defer cancel()
	if _, err := k.Dynamic.Resource(AuthorizationPolicyResource).List(syncCtx, metav1.ListOptions{Limit: 1}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("workload: the AuthorizationPolicy CRD (security.amesh.io/v1) is not installed: apply deploy/crd.yaml: %w", err)
		}
		return nil, fmt.Errorf("workload: list AuthorizationPolicies: %w", err)
	}
	k.changed = make(chan struct{}, 1)
	k.urgent = make(chan struct{}, 1)
	k.pending = newChanges()
	k.tr = tracker{td: k.TrustDomain, rootNS: k.RootNamespace}
	pods := k.informer(ctx, podsResource, slimPod, cache.Indexers{byUIDIndex: podUIDIndex})
	nss := k.informer(ctx, namespacesResource, typed[corev1.Namespace], nil)
	svcs := k.informer(ctx, servicesResource, slimService, nil)
	eps := k.informer(ctx, endpointSlicesResource, slimSlice, cache.Indexers{byServiceIndex: sliceServiceKeys})
	pols := k.informer(ctx, AuthorizationPolicyResource, trimUnstructured, nil)
	k.stores = informerView{pods: pods.GetIndexer(), nss: nss.GetStore(), svcs: svcs.GetStore(), eps: eps.GetIndexer(), pols: pols.GetStore()}
	informers := []cache.SharedIndexInformer{pods, nss, svcs, eps, pols}
	handlers := []cache.ResourceEventHandler{
		k.handler(func(c *changes, key string, _ any) { c.pods[key] = true }),
		k.handler(func(c *changes, _ string, _ any) { c.full = true }),
		k.handler(func(c *changes, key string, _ any) { c.services[key] = true }),
		k.handler(func(c *changes, _ string, obj any) {
			for _, key := range serviceKeysOf(obj) {
				c.services[key] = true
			}
		}),
		k.handler(func(c *changes, key string, _ any) { c.policies[key] = true }),
	}
	// HTTPRoutes only where Gateway API is installed: without it there are no routes, and
	// waypoints send each service's requests to the service itself. (Installed later, it is
	// seen when the waypoint restarts.)
	if k.WatchRoutes {
		if _, err := k.Dynamic.Resource(HTTPRouteResource).List(syncCtx, metav1.ListOptions{Limit: 1}); err == nil {
			rts := k.informer(ctx, HTTPRouteResource, trimUnstructured, nil)
			k.stores.rts = rts.GetStore()
			informers = append(informers, rts)
			handlers = append(handlers, k.handler(func(c *changes, _ string, _ any) { c.full = true }))
		} else {
			k.Logger.Info("no HTTPRoutes (Gateway API's CRD is not installed or not readable): waypoints route to the services themselves", "err", err)
		}
	}
	for i, inf := range informers {
		if _, err := inf.AddEventHandler(handlers[i]); err != nil {
			return nil, fmt.Errorf("workload: watch: %w", err)
		}
		if err := inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			k.watchErrs.Add(1)
			k.Logger.Warn("kubernetes watch interrupted; serving from the cache until it resyncs", "err", err)
		}); err != nil {
			return nil, fmt.Errorf("workload: watch: %w", err)
		}
	}
	for _, inf := range informers {
		go inf.Run(ctx.Done())
	}
	for _, inf := range informers {
		if !cache.WaitForCacheSync(syncCtx.Done(), inf.HasSynced) {
			return nil, fmt.Errorf("workload: kubernetes caches did not sync within %v: %w", k.SyncTimeout, context.Cause(syncCtx))
		}
	}
	// The events of the initial list were only the sync: the full build takes them all.
	k.take()
	st, err := k.build(changes{full: true})
	if err != nil {
		return nil, err
	}
	select {
	case <-k.changed:
	default:
	}
	return st, nil
}

// handler records what an informer's events changed (note says how) and wakes Run.
func (k *Source) handler(note func(c *changes, key string, obj any)) cache.ResourceEventHandler {
	record := func(obj any) {
		key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		if err != nil {
			return
		}
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		k.mu.Lock()
		note(&k.pending, key, obj)
		k.mu.Unlock()
		k.poke()
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: record,
		UpdateFunc: func(old, obj any) {
			record(old) // a slice's service may have changed: both are noted
			record(obj)
		},
		DeleteFunc: record,
	}
}

// take returns the changes noted since the last call.
func (k *Source) take() changes {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := k.pending
	k.pending = newChanges()
	return c
}

// Refresh makes Run build a new State at once, without the debounce: for a pod whose CNI ADD
// waits on it. The pod IPs of the CNI plugin (PodIPs) are read again: the pods whose IPs
// changed are converted again.
func (k *Source) Refresh() {
	k.mu.Lock()
	k.pending.cni = true
	k.mu.Unlock()
	select {
	case k.urgent <- struct{}{}:
	default:
	}
}

func (k *Source) poke() {
	select {
	case k.changed <- struct{}{}:
	default:
	}
}

// Run replaces store's State after every change until ctx is done. A State that fails to build
// (it should not: Spec leaves out what workload.NewState would refuse) is logged and the previous one
// kept.
func (k *Source) Run(ctx context.Context, store *workload.Store) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.urgent:
		case <-k.changed:
			select {
			case <-ctx.Done():
				return
			case <-k.urgent:
			case <-time.After(k.Debounce):
			}
		}
		select { // events during the wait are in this build
		case <-k.changed:
		default:
		}
		ch := k.take()
		if ch.empty() {
			continue
		}
		st, err := k.build(ch)
		if err != nil {
			k.rejected.Add(1)
			k.Logger.Error("kubernetes state rejected; keeping the previous one", "err", err)
			continue
		}
		store.Replace(st)
	}
}

// Problems returns how many objects were left out or replaced (invalid policies) so far.
func (k *Source) Problems() int64 { return k.problems.Load() }

// Rejected returns how many rebuilt states Run rejected (the previous one stayed in force).
func (k *Source) Rejected() uint64 { return k.rejected.Load() }

// Builds returns how many States were built from every object cached (full) and from the
// objects of one change (incremental).
func (k *Source) Builds() (full, incremental uint64) {
	return k.fullBuilds.Load(), k.incrBuilds.Load()
}

// WatchErrors returns how many times a watch was interrupted (each resumed by its informer).
func (k *Source) WatchErrors() uint64 { return k.watchErrs.Load() }

// build makes the next State: from the objects ch names when it can (tracker.apply), else from
// every object.
func (k *Source) build(ch changes) (*workload.State, error) {
	var podIPs map[string][]netip.Addr
	if k.PodIPs != nil {
		podIPs = k.PodIPs()
	}
	if ch.cni {
		for uid := range mergedKeys(k.lastIPs, podIPs) {
			if !slices.Equal(k.lastIPs[uid], podIPs[uid]) {
				for _, key := range k.stores.podKeys(uid) {
					ch.pods[key] = true
				}
			}
		}
	}
	k.lastIPs = podIPs
	if !ch.full {
		st, problems, err := k.tr.apply(k.stores, ch, podIPs)
		if err == nil {
			k.incrBuilds.Add(1)
			if len(problems) > 0 {
				k.problems.Add(int64(len(problems)))
				for _, p := range problems {
					k.Logger.Warn("kubernetes object not used as written", "err", p)
				}
			}
			return st, nil
		}
		k.Logger.Debug("kubernetes state built in full", "why", err)
	}
	k.stores.podIPs = podIPs
	st, problems, err := k.tr.full(k.stores)
	k.fullBuilds.Add(1)
	if err != nil {
		return nil, err
	}
	if len(problems) > 0 {
		k.problems.Add(int64(len(problems)))
		// Logged when they change, not on every full build.
		if report := errors.Join(problems...).Error(); report != k.lastReport {
			k.lastReport = report
			for _, p := range problems {
				k.Logger.Warn("kubernetes object not used as written", "err", p)
			}
		}
	} else {
		k.lastReport = ""
	}
	return st, nil
}

// DefaultDebounce is Source.Debounce's default: an API change is enforced ~20 ms later at the
// least, and the events of that window make one State. A longer one makes fewer, larger builds
// (less CPU per event when the cluster churns slowly) for as much more latency; istiod's
// equivalent is 100 ms (README "Cluster scale" has both measured).
const DefaultDebounce = 20 * time.Millisecond

// The resources the source watches besides AuthorizationPolicies.
var (
	podsResource           = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	namespacesResource     = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	servicesResource       = schema.GroupVersionResource{Version: "v1", Resource: "services"}
	endpointSlicesResource = schema.GroupVersionResource{Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"}
)

// informer watches gvr across namespaces, with no resync, storing what transform makes of each
// object, with indexers.
func (k *Source) informer(ctx context.Context, gvr schema.GroupVersionResource, transform cache.TransformFunc, indexers cache.Indexers) cache.SharedIndexInformer {
	if k.Protobuf != nil {
		if lw, obj, err := protobufListWatch(k.Protobuf, gvr); err == nil {
			inf := cache.NewSharedIndexInformer(lw, obj, 0, indexers)
			if err := inf.SetTransform(transform); err != nil {
				k.Logger.Error("informer transform", "resource", gvr.Resource, "err", err)
			}
			return inf
		} else if !errors.Is(err, errNotBuiltIn) {
			k.Logger.Warn("protobuf client; watching in JSON", "resource", gvr.Resource, "err", err)
		}
	}
	res := k.Dynamic.Resource(gvr)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return res.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return res.Watch(ctx, o)
		},
	}
	if indexers == nil {
		indexers = cache.Indexers{}
	}
	inf := cache.NewSharedIndexInformer(lw, &unstructured.Unstructured{}, 0, indexers)
	if err := inf.SetTransform(transform); err != nil {
		k.Logger.Error("informer transform", "resource", gvr.Resource, "err", err) // only if already started
	}
	return inf
}

// typed turns an object of the dynamic client into its typed form (the listers and Spec read
// those), dropping what the agent never reads (managed fields, annotations such as kubectl's
// last-applied configuration), which are most of a pod's size.
func typed[T any, PT interface {
	*T
	metav1.Object
}](obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		if m, ok := obj.(PT); ok { // from the protobuf client
			m.SetManagedFields(nil)
			m.SetAnnotations(nil)
		}
		return obj, nil // or a tombstone (DeletedFinalStateUnknown)
	}
	var t T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &t); err != nil {
		return nil, fmt.Errorf("workload: %s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	PT(&t).SetManagedFields(nil)
	PT(&t).SetAnnotations(nil)
	return PT(&t), nil
}

func trimUnstructured(obj any) (any, error) {
	if u, ok := obj.(*unstructured.Unstructured); ok {
		u.SetManagedFields(nil)
		u.SetAnnotations(nil)
	}
	return obj, nil
}

// RESTConfig is the client configuration of a feeder: from kubeconfig, or the in-cluster
// service account when it is empty; userAgent names the program in the API server's logs.
func RESTConfig(kubeconfig, userAgent string) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	rc.UserAgent = userAgent
	return rc, nil
}

// NewClients returns the dynamic client a Source reads with and the configuration of its
// protobuf client (Source.Dynamic and Source.Protobuf; see RESTConfig).
func NewClients(kubeconfig, userAgent string) (dynamic.Interface, *rest.Config, error) {
	rc, err := RESTConfig(kubeconfig, userAgent)
	if err != nil {
		return nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return dyn, rc, nil
}
