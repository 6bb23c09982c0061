// Package casecret keeps a cluster's built-in CA in a Kubernetes Secret: the one root every
// node's agent issues from (deploy/'s amesh-ca-init Job creates it, the DaemonSet mounts it at
// --ca-dir, so no agent needs access to Secrets). It is apart from package identity so that
// identity, which the tunnel links, carries no Kubernetes client.
package casecret

import (
	"context"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/amesh-dev/amesh/identity"
)

// Resource is the group-version-resource of Secrets, for dynamic.Interface.Resource.
var Resource = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}

// Ensure creates the Secret ns/name holding a new CA for td (keys identity.CACertFile and
// identity.CAKeyFile), or, when it exists, checks that it holds a usable CA and leaves it
// alone. It returns a line saying which it did. It works through the dynamic client: the
// typed clientset would link every API group of Kubernetes into the agent.
func Ensure(ctx context.Context, secrets dynamic.ResourceInterface, td spiffeid.TrustDomain, ns, name string) (string, error) {
	u, err := secrets.Get(ctx, name, metav1.GetOptions{})
	switch {
	case err == nil:
		var existing corev1.Secret
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &existing); err != nil {
			return "", fmt.Errorf("secret %s/%s: %w", ns, name, err)
		}
		if err := check(td, &existing); err != nil {
			return "", fmt.Errorf("secret %s/%s exists but is not a usable CA (delete it to make a new one; every agent must then restart): %w", ns, name, err)
		}
		return fmt.Sprintf("secret %s/%s already holds the CA for %s", ns, name, td), nil
	case !apierrors.IsNotFound(err):
		return "", fmt.Errorf("get secret %s/%s: %w", ns, name, err)
	}
	ca, err := identity.NewCA(td, identity.CAConfig{})
	if err != nil {
		return "", err
	}
	certPEM, keyPEM, err := ca.PEM()
	if err != nil {
		return "", err
	}
	s := &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app.kubernetes.io/part-of": "amesh"}},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{identity.CACertFile: certPEM, identity.CAKeyFile: keyPEM},
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(s)
	if err != nil {
		return "", err
	}
	if _, err := secrets.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return fmt.Sprintf("secret %s/%s was created meanwhile; left alone", ns, name), nil
		}
		return "", fmt.Errorf("create secret %s/%s: %w", ns, name, err)
	}
	return fmt.Sprintf("created secret %s/%s with a new CA for %s", ns, name, td), nil
}

// check says whether s holds a CA for td that identity can use.
func check(td spiffeid.TrustDomain, s *corev1.Secret) error {
	certPEM, ok := s.Data[identity.CACertFile]
	if !ok {
		return errors.New("no " + identity.CACertFile)
	}
	keyPEM, ok := s.Data[identity.CAKeyFile]
	if !ok {
		return errors.New("no " + identity.CAKeyFile)
	}
	_, err := identity.ParseCA(td, certPEM, keyPEM, identity.CAConfig{})
	return err
}
