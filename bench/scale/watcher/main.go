// Command watcher is the peer bench/scale measures beside the agent, on the same watch events in
// the same run, so that the agent's CPU per event reads against what watching alone costs on the
// same machine:
//
//   - -mode informer is what any client-go agent pays before doing anything with an event: stock
//     shared informers (client-go's informer factory, typed decoding, a full cache) on pods,
//     namespaces, services and EndpointSlices, in protobuf without gzip as the agent watches, with
//     handlers that only count;
//   - -mode stream is the transport alone: the same four watches read as bytes and dropped (TLS,
//     HTTP/2, the read syscalls and wake-ups; no decoding, no cache).
//
// It prints "synced" once it watches, and on SIGTERM "events N bytes M" (handler calls, or bytes
// read) and exits. It is a developer's benchmark tool: no image ships it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "the API server's kubeconfig")
	mode := flag.String("mode", "informer", "informer (stock client-go informers) or stream (the watch bytes alone)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, *kubeconfig, *mode); err != nil {
		fmt.Fprintln(os.Stderr, "watcher:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, kubeconfig, mode string) error {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	// As the agent watches: protobuf, no gzip (workload/kube), no client-side rate limit.
	rc.ContentType = runtime.ContentTypeProtobuf
	rc.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	rc.DisableCompression = true
	rc.QPS, rc.Burst = -1, 0
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	var events, bytes atomic.Int64
	switch mode {
	case "informer":
		err = watchInformers(ctx, cs, &events)
	case "stream":
		err = watchStreams(ctx, cs, &bytes)
	default:
		err = fmt.Errorf("unknown -mode %q (informer or stream)", mode)
	}
	fmt.Printf("events %d bytes %d\n", events.Load(), bytes.Load())
	return err
}

// watchInformers runs stock informers on the four resources until ctx ends, counting handler
// calls.
func watchInformers(ctx context.Context, cs kubernetes.Interface, events *atomic.Int64) error {
	f := informers.NewSharedInformerFactory(cs, 0)
	count := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { events.Add(1) },
		UpdateFunc: func(any, any) { events.Add(1) },
		DeleteFunc: func(any) { events.Add(1) },
	}
	var regs []cache.ResourceEventHandlerRegistration
	for _, inf := range []cache.SharedIndexInformer{
		f.Core().V1().Pods().Informer(),
		f.Core().V1().Namespaces().Informer(),
		f.Core().V1().Services().Informer(),
		f.Discovery().V1().EndpointSlices().Informer(),
	} {
		reg, err := inf.AddEventHandler(count)
		if err != nil {
			return err
		}
		regs = append(regs, reg)
	}
	f.Start(ctx.Done())
	// A cache is synced before its handlers have been told of everything in it: wait for the
	// handlers too, so that what the first lists hand them is not counted as churn.
	syncs := []cache.InformerSynced{}
	for _, reg := range regs {
		syncs = append(syncs, reg.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), syncs...) {
		return errors.New("informers not synced")
	}
	// The first lists are not the churn the harness measures.
	events.Store(0)
	fmt.Println("synced")
	<-ctx.Done()
	f.Shutdown()
	return nil
}

// watchStreams opens one watch per resource from its current version and drops what arrives,
// counting bytes, until ctx ends.
func watchStreams(ctx context.Context, cs kubernetes.Interface, bytes *atomic.Int64) error {
	type res struct {
		client   rest.Interface
		resource string
		list     func(context.Context) (string, error)
	}
	core, disc := cs.CoreV1(), cs.DiscoveryV1()
	one := metav1.ListOptions{Limit: 1}
	all := []res{
		{core.RESTClient(), "pods", func(ctx context.Context) (string, error) {
			l, err := core.Pods("").List(ctx, one)
			return rv(l, err)
		}},
		{core.RESTClient(), "namespaces", func(ctx context.Context) (string, error) {
			l, err := core.Namespaces().List(ctx, one)
			return rv(l, err)
		}},
		{core.RESTClient(), "services", func(ctx context.Context) (string, error) {
			l, err := core.Services("").List(ctx, one)
			return rv(l, err)
		}},
		{disc.RESTClient(), "endpointslices", func(ctx context.Context) (string, error) {
			l, err := disc.EndpointSlices("").List(ctx, one)
			return rv(l, err)
		}},
	}
	var streams []io.ReadCloser
	for _, r := range all {
		version, err := r.list(ctx)
		if err != nil {
			return fmt.Errorf("list %s: %w", r.resource, err)
		}
		s, err := r.client.Get().Resource(r.resource).
			VersionedParams(&metav1.ListOptions{Watch: true, ResourceVersion: version}, metav1.ParameterCodec).
			Stream(ctx)
		if err != nil {
			return fmt.Errorf("watch %s: %w", r.resource, err)
		}
		streams = append(streams, s)
	}
	fmt.Println("synced")
	var wg sync.WaitGroup
	errs := make([]error, len(streams))
	for i, s := range streams {
		wg.Go(func() {
			defer s.Close()
			n, err := io.Copy(io.Discard, s)
			bytes.Add(n)
			if ctx.Err() == nil {
				errs[i] = fmt.Errorf("watch %s ended: %w", all[i].resource, cmpErr(err, io.EOF))
			}
		})
	}
	<-ctx.Done()
	for _, s := range streams {
		s.Close()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// listMeta is what the four typed lists share.
type listMeta interface{ GetResourceVersion() string }

func rv(l listMeta, err error) (string, error) {
	if err != nil {
		return "", err
	}
	return l.GetResourceVersion(), nil
}

func cmpErr(err, otherwise error) error {
	if err != nil {
		return err
	}
	return otherwise
}
