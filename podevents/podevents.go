// Package podevents reports what a node agent could not do for a pod as a Kubernetes Event
// regarding the pod, where its owner looks first (`kubectl describe pod`, `kubectl get
// events`). Reporting never blocks the caller and is bounded: one Event per pod and reason per
// Interval, a token bucket over all pods, and a short queue whose overflow is dropped and counted,
// so that a node full of failing pods cannot flood the API server.
package podevents

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
)

// Defaults of a Recorder.
const (
	// DefaultInterval: a pod that keeps failing for the same reason gets an Event this often,
	// about as often as its retries reach their 30 s cap ten times over.
	DefaultInterval = 5 * time.Minute
	// maxNote is what the API server keeps of a message (core/v1 Event: 1 KiB for the newer
	// events.k8s.io note; the older message is longer, but a line of an error is enough).
	maxNote = 1024
	// queueLen bounds the Events waiting for the API server.
	queueLen = 64
	// maxKeys bounds the memory of what was reported when: past it, entries older than the
	// interval are forgotten.
	maxKeys = 4096
)

var eventsResource = schema.GroupVersionResource{Version: "v1", Resource: "events"}

// Pod names the pod an Event is about.
type Pod struct {
	Namespace, Name, UID string
}

// event is a Warning Event waiting to be posted (the only type a Recorder posts).
type event struct {
	pod          Pod
	reason, note string
	at           time.Time
}

// Recorder posts Events about pods through a dynamic client (the agent's own: no typed
// clientset is linked for this).
type Recorder struct {
	dyn       dynamic.Interface
	component string
	host      string
	log       *slog.Logger
	// interval: how long after an Event for a pod and reason another for the same is skipped.
	interval time.Duration
	limiter  *rate.Limiter
	queue    chan event

	mu   sync.Mutex
	last map[string]time.Time // pod UID + reason → when it was last queued

	posted, dropped, failed atomic.Uint64
}

// Config is what New needs besides the client.
type Config struct {
	// Component names the reporter (the Event's source.component), e.g. "amesh-agent".
	Component string
	// Host is the node (the Event's source.host).
	Host string
	// Interval: see DefaultInterval (used when zero).
	Interval time.Duration
	// Rate and Burst bound Events over all pods (1 per second, burst 10, when zero).
	Rate  rate.Limit
	Burst int
	// Logger; slog.Default when nil.
	Logger *slog.Logger
}

// New returns a Recorder; Run posts what it records.
func New(dyn dynamic.Interface, cfg Config) *Recorder {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 1
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 10
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Recorder{
		dyn: dyn, component: cfg.Component, host: cfg.Host, log: cfg.Logger,
		interval: cfg.Interval, limiter: rate.NewLimiter(cfg.Rate, cfg.Burst),
		queue: make(chan event, queueLen), last: map[string]time.Time{},
	}
}

// Warning records a Warning Event regarding pod, unless one for the same pod and reason was
// recorded within the interval. It never blocks: when the queue is full the Event is dropped
// (and counted).
func (r *Recorder) Warning(pod Pod, reason, note string) {
	now := time.Now()
	key := pod.UID + "\x00" + reason
	r.mu.Lock()
	if t, ok := r.last[key]; ok && now.Sub(t) < r.interval {
		r.mu.Unlock()
		return
	}
	if len(r.last) >= maxKeys {
		for k, t := range r.last {
			if now.Sub(t) >= r.interval {
				delete(r.last, k)
			}
		}
		if len(r.last) >= maxKeys {
			// All recent: forget them all rather than grow past the bound (at worst one more
			// Event for each of those pods).
			clear(r.last)
		}
	}
	r.last[key] = now
	r.mu.Unlock()
	if len(note) > maxNote {
		note = note[:maxNote-3] + "..."
	}
	select {
	case r.queue <- event{pod: pod, reason: reason, note: note, at: now}:
	default:
		r.dropped.Add(1)
	}
}

// Run posts the recorded Events until ctx ends, each within the rate and bounded in time.
func (r *Recorder) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-r.queue:
			if err := r.limiter.Wait(ctx); err != nil {
				return
			}
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := r.post(pctx, ev)
			cancel()
			if err != nil {
				r.failed.Add(1)
				r.log.Warn("pod event not posted", "pod", ev.pod.Namespace+"/"+ev.pod.Name, "reason", ev.reason, "err", err)
				continue
			}
			r.posted.Add(1)
		}
	}
}

// Counts returns how many Events were posted, dropped (queue full) and failed (the API server
// refused them or did not answer).
func (r *Recorder) Counts() (posted, dropped, failed uint64) {
	return r.posted.Load(), r.dropped.Load(), r.failed.Load()
}

// post creates ev as a core/v1 Event, which both `kubectl describe pod` and events.k8s.io
// readers see.
func (r *Recorder) post(ctx context.Context, ev event) error {
	ts := metav1.NewTime(ev.at)
	obj := &corev1.Event{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Event"},
		ObjectMeta: metav1.ObjectMeta{
			// As the kubelet names its Events: the object's name and a unique suffix.
			Name:      fmt.Sprintf("%s.%x", ev.pod.Name, ev.at.UnixNano()),
			Namespace: ev.pod.Namespace,
		},
		InvolvedObject: corev1.ObjectReference{APIVersion: "v1", Kind: "Pod", Namespace: ev.pod.Namespace, Name: ev.pod.Name, UID: types.UID(ev.pod.UID)},
		Reason:         ev.reason,
		Message:        ev.note,
		Type:           corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: r.component, Host: r.host},
		FirstTimestamp: ts,
		LastTimestamp:  ts,
		Count:          1,
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return fmt.Errorf("podevents: %w", err)
	}
	if _, err := r.dyn.Resource(eventsResource).Namespace(ev.pod.Namespace).Create(ctx, &unstructured.Unstructured{Object: m}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("podevents: create event: %w", err)
	}
	return nil
}
