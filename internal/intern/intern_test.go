package intern

import (
	"fmt"
	"maps"
	"reflect"
	"testing"
	"unsafe"
)

func same(a, b string) bool { return unsafe.StringData(a) == unsafe.StringData(b) }

func TestString(t *testing.T) {
	a := String(fmt.Sprint("shop", 1))
	b := Bytes([]byte("shop1"))
	if a != "shop1" || !same(a, b) {
		t.Errorf("String and Bytes of equal values: %q %q, shared %v", a, b, same(a, b))
	}
	buf := []byte("node-7")
	c := Bytes(buf)
	buf[0] = 'X'
	if c != "node-7" {
		t.Errorf("Bytes kept the caller's buffer: %q", c)
	}
	if String("") != "" || Bytes(nil) != "" {
		t.Error("empty")
	}
}

func TestLabels(t *testing.T) {
	tests := []struct {
		name   string
		a, b   map[string]string
		shared bool
	}{
		{"equal sets", map[string]string{"app": "web", "pod-template-hash": "5d8f"}, map[string]string{"pod-template-hash": "5d8f", "app": "web"}, true},
		{"a value differs", map[string]string{"app": "web"}, map[string]string{"app": "api"}, false},
		{"a key more", map[string]string{"app": "web"}, map[string]string{"app": "web", "v": "1"}, false},
		// Length-prefixed: "a"+"bc" and "ab"+"c" are different sets.
		{"boundaries", map[string]string{"a": "bc"}, map[string]string{"ab": "c"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			la, lb := Labels(tt.a), Labels(tt.b)
			if !maps.Equal(la, tt.a) || !maps.Equal(lb, tt.b) {
				t.Fatalf("contents changed: %v %v", la, lb)
			}
			if got := reflect.ValueOf(la).UnsafePointer() == reflect.ValueOf(lb).UnsafePointer(); got != tt.shared {
				t.Errorf("shared = %v, want %v", got, tt.shared)
			}
		})
	}
	in := map[string]string{"app": "mutable"}
	l := Labels(in)
	in["app"] = "changed"
	if l["app"] != "mutable" {
		t.Error("Labels kept the caller's map")
	}
	if Labels(nil) != nil || Labels(map[string]string{}) != nil {
		t.Error("empty sets are nil")
	}
}

// TestGenerations: past the bound, values from before stay correct (and the cache does not grow
// without end).
func TestGenerations(t *testing.T) {
	first := String("kept-while-used")
	for i := range genCap + 10 {
		String(fmt.Sprint("v", i))
	}
	if again := String("kept-while-used"); again != first || !same(again, first) {
		t.Errorf("a value from the generation before: %q", again)
	}
	for i := range 2*genCap + 10 {
		String(fmt.Sprint("w", i))
	}
	if n := len(strs.cur) + len(strs.prev); n > 2*genCap {
		t.Errorf("%d entries, want at most %d", n, 2*genCap)
	}
	if again := String("kept-while-used"); again != "kept-while-used" {
		t.Errorf("after two generations: %q", again)
	}
}
