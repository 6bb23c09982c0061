package waypoint

import (
	"bytes"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// TestManifests: the objects parse strictly as their Kubernetes types, with the names, labels
// and security settings the agents and the API server expect; bad input is refused.
func TestManifests(t *testing.T) {
	y, err := Manifests(Deployment{Namespace: "shop", Name: "wp"})
	if err != nil {
		t.Fatal(err)
	}
	docs := bytes.Split(y, []byte("\n---\n"))
	if len(docs) != 4 {
		t.Fatalf("%d objects, want 4:\n%s", len(docs), y)
	}
	var (
		sa  corev1.ServiceAccount
		crb rbacv1.ClusterRoleBinding
		svc corev1.Service
		dep appsv1.Deployment
	)
	for i, into := range []any{&sa, &crb, &svc, &dep} {
		if err := yaml.UnmarshalStrict(docs[i], into); err != nil {
			t.Fatalf("object %d: %v\n%s", i, err, docs[i])
		}
	}
	if sa.Name != "wp" || sa.Namespace != "shop" {
		t.Errorf("service account %s/%s", sa.Namespace, sa.Name)
	}
	if crb.RoleRef.Name != "amesh-waypoint" || len(crb.Subjects) != 1 || crb.Subjects[0].Name != "wp" || crb.Subjects[0].Namespace != "shop" {
		t.Errorf("binding %+v", crb)
	}
	if svc.Labels["amesh.io/waypoint-for"] != "service" || svc.Spec.Ports[0].Port != 15008 || svc.Spec.Selector["amesh.io/waypoint"] != "wp" {
		t.Errorf("service %+v", svc)
	}
	pod := dep.Spec.Template
	c := pod.Spec.Containers[0]
	if pod.Labels["amesh.io/dataplane-mode"] != "none" || pod.Labels["amesh.io/waypoint"] != "wp" || pod.Spec.ServiceAccountName != "wp" {
		t.Errorf("pod template labels %v, service account %q", pod.Labels, pod.Spec.ServiceAccountName)
	}
	if sc := c.SecurityContext; sc == nil || *sc.Privileged || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem || len(sc.Capabilities.Add) > 0 || !*pod.Spec.SecurityContext.RunAsNonRoot {
		t.Errorf("security context %+v / %+v", c.SecurityContext, pod.Spec.SecurityContext)
	}
	if !strings.Contains(strings.Join(c.Args, " "), "--kube --name wp --service-account wp") {
		t.Errorf("args %q", c.Args)
	}
	for _, bad := range []Deployment{{}, {Namespace: "Shop"}, {Namespace: "shop", For: "pods"}, {Namespace: "shop", Name: "a_b"}, {Namespace: "shop", Replicas: -1}} {
		if _, err := Manifests(bad); err == nil {
			t.Errorf("Manifests(%+v) accepted", bad)
		}
	}
}
