package podevents

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestWarningBounds: what Warning queues, in order, for a sequence of reports; no Run, so
// nothing leaves the queue and its bound shows.
func TestWarningBounds(t *testing.T) {
	pod := func(i int) Pod { return Pod{Namespace: "ns", Name: "p", UID: string(rune('a' + i))} }
	tests := []struct {
		name     string
		interval time.Duration
		report   func(r *Recorder)
		queued   int
		dropped  uint64
	}{
		{"one report", time.Hour, func(r *Recorder) { r.Warning(pod(0), "EnrollmentFailed", "x") }, 1, 0},
		{"the same pod and reason again within the interval", time.Hour, func(r *Recorder) {
			for range 10 {
				r.Warning(pod(0), "EnrollmentFailed", "x")
			}
		}, 1, 0},
		{"another reason of the same pod", time.Hour, func(r *Recorder) {
			r.Warning(pod(0), "EnrollmentFailed", "x")
			r.Warning(pod(0), "Other", "x")
		}, 2, 0},
		{"another pod", time.Hour, func(r *Recorder) {
			r.Warning(pod(0), "EnrollmentFailed", "x")
			r.Warning(pod(1), "EnrollmentFailed", "x")
		}, 2, 0},
		{"the same again once the interval passed", time.Nanosecond, func(r *Recorder) {
			r.Warning(pod(0), "EnrollmentFailed", "x")
			time.Sleep(time.Millisecond)
			r.Warning(pod(0), "EnrollmentFailed", "x")
		}, 2, 0},
		{"more pods than the queue holds: the rest dropped and counted", time.Hour, func(r *Recorder) {
			for i := range queueLen + 36 {
				r.Warning(Pod{Namespace: "ns", Name: "p", UID: strings.Repeat("u", i+1)}, "EnrollmentFailed", "x")
			}
		}, queueLen, 36},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(nil, Config{Interval: tt.interval})
			tt.report(r)
			if got := len(r.queue); got != tt.queued {
				t.Errorf("queued %d, want %d", got, tt.queued)
			}
			if _, dropped, _ := r.Counts(); dropped != tt.dropped {
				t.Errorf("dropped %d, want %d", dropped, tt.dropped)
			}
		})
	}
}

// TestWarningTruncatesNote: a note past what the API server keeps is cut, marked as cut.
func TestWarningTruncatesNote(t *testing.T) {
	r := New(nil, Config{})
	r.Warning(Pod{Namespace: "ns", Name: "p", UID: "u"}, "EnrollmentFailed", strings.Repeat("e", 5000))
	ev := <-r.queue
	if len(ev.note) != maxNote || !strings.HasSuffix(ev.note, "...") {
		t.Errorf("note of %d bytes ending %q, want %d ending ...", len(ev.note), ev.note[len(ev.note)-5:], maxNote)
	}
}

// TestKeysStayBounded: the record of what was reported stays bounded, also when every entry
// is recent.
func TestKeysStayBounded(t *testing.T) {
	r := New(nil, Config{Interval: time.Hour})
	for i := range maxKeys + 100 {
		r.Warning(Pod{Namespace: "ns", Name: "p", UID: fmt.Sprint(i)}, "R", "x")
		for len(r.queue) > 0 {
			<-r.queue
		}
	}
	if n := len(r.last); n > maxKeys {
		t.Errorf("%d keys remembered, bound %d", n, maxKeys)
	}
}

// TestForgetsOldKeys: the record of what was reported stays bounded.
func TestForgetsOldKeys(t *testing.T) {
	r := New(nil, Config{Interval: time.Nanosecond})
	for i := range maxKeys + 100 {
		r.Warning(Pod{Namespace: "ns", Name: "p", UID: strings.Repeat("u", i%7) + string(rune(i))}, "R", "x")
		if len(r.queue) == queueLen {
			for len(r.queue) > 0 {
				<-r.queue
			}
		}
		time.Sleep(0)
	}
	if n := len(r.last); n > maxKeys {
		t.Errorf("%d keys remembered, bound %d", n, maxKeys)
	}
}
