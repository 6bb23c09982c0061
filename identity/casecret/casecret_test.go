package casecret

import (
	"context"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"

	"github.com/amesh-dev/amesh/identity"
)

func TestEnsure(t *testing.T) {
	ctx := context.Background()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{Resource: "SecretList"})
	secrets := dyn.Resource(Resource).Namespace("amesh-system")

	msg, err := Ensure(ctx, secrets, td, "amesh-system", "amesh-ca")
	if err != nil || !strings.Contains(msg, "created secret amesh-system/amesh-ca") {
		t.Fatalf("first Ensure = %q, %v; want created", msg, err)
	}
	u, err := secrets.Get(ctx, "amesh-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := u.Object["data"].(map[string]any)
	if len(data) != 2 {
		t.Fatalf("secret data keys = %v, want %s and %s", data, identity.CACertFile, identity.CAKeyFile)
	}
	msg, err = Ensure(ctx, secrets, td, "amesh-system", "amesh-ca")
	if err != nil || !strings.Contains(msg, "already holds the CA") {
		t.Fatalf("second Ensure = %q, %v; want left alone", msg, err)
	}

	// A Secret that is there but holds no usable CA is an error, never overwritten.
	delete(data, identity.CAKeyFile)
	if _, err := secrets.Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Ensure(ctx, secrets, td, "amesh-system", "amesh-ca"); err == nil || !strings.Contains(err.Error(), "not a usable CA") {
		t.Fatalf("Ensure on a broken Secret = %v, want 'not a usable CA'", err)
	}
}
