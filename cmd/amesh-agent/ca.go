package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

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

// createCA is `amesh-agent create-ca`, the deploy/ Job that gives a cluster one built-in CA: it
// creates the Secret the DaemonSet mounts at --ca-dir on every node (so every agent issues from
// the same root, and no agent needs any access to Secrets), or, when the Secret already exists,
// checks that it holds a usable CA and leaves it alone.
func createCA(args []string) int {
	fs := flag.NewFlagSet("amesh-agent create-ca", flag.ContinueOnError)
	secret := fs.String("secret", "amesh-system/amesh-ca", "namespace/name of the Secret to create")
	kubeconfig := fs.String("kubeconfig", env("KUBECONFIG", ""), "kubeconfig (default: in-cluster service account)")
	trustDomain := fs.String("trust-domain", env("AMESH_TRUST_DOMAIN", "cluster.local"), "SPIFFE trust domain of the CA")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	ns, name, ok := strings.Cut(*secret, "/")
	if !ok || ns == "" || name == "" {
		fmt.Fprintf(os.Stderr, "amesh-agent create-ca: --secret %q: want namespace/name\n", *secret)
		return 2
	}
	td, err := spiffeid.TrustDomainFromString(*trustDomain)
	if err != nil {
		fmt.Fprintf(os.Stderr, "amesh-agent create-ca: --trust-domain %q: %v\n", *trustDomain, err)
		return 2
	}
	rc, err := restConfig(*kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "amesh-agent create-ca:", err)
		return 1
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		fmt.Fprintln(os.Stderr, "amesh-agent create-ca:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	msg, err := ensureCASecret(ctx, dyn.Resource(secretsResource).Namespace(ns), td, ns, name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "amesh-agent create-ca:", err)
		return 1
	}
	fmt.Println(msg)
	return 0
}

var secretsResource = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}

// ensureCASecret works through the dynamic client: the typed clientset would link every API
// group of Kubernetes into the agent.
func ensureCASecret(ctx context.Context, secrets dynamic.ResourceInterface, td spiffeid.TrustDomain, ns, name string) (string, error) {
	u, err := secrets.Get(ctx, name, metav1.GetOptions{})
	switch {
	case err == nil:
		var existing corev1.Secret
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &existing); err != nil {
			return "", fmt.Errorf("secret %s/%s: %w", ns, name, err)
		}
		if err := checkCASecret(td, &existing); err != nil {
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
	dir, err := os.MkdirTemp("", "amesh-ca-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	if err := ca.WriteFiles(dir); err != nil {
		return "", err
	}
	data := map[string][]byte{}
	for _, f := range []string{identity.CACertFile, identity.CAKeyFile} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return "", err
		}
		data[f] = b
	}
	s := &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app.kubernetes.io/part-of": "amesh"}},
		Type:       corev1.SecretTypeOpaque,
		Data:       data,
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

func checkCASecret(td spiffeid.TrustDomain, s *corev1.Secret) error {
	dir, err := os.MkdirTemp("", "amesh-ca-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for _, f := range []string{identity.CACertFile, identity.CAKeyFile} {
		b, ok := s.Data[f]
		if !ok {
			return errors.New("no " + f)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			return err
		}
	}
	_, err = identity.LoadCA(td, dir, identity.CAConfig{})
	return err
}
