package kube

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/amesh-dev/amesh/internal/intern"
)

// The pods' protobuf decoder. Every agent receives every pod of the cluster, and a pod as the API
// server sends it (a Deployment's: containers, env, resources, probes, volumes, conditions, managed
// fields) is a few KiB of protobuf that the generated code turns into ~5 KiB of Go heap, of which
// the agent keeps a podInfo. Decoding it was a sixth of the agent's CPU per pod event and most of
// what it allocated (bench/scale, 10,000 pods: 120 MB of the 230 MB allocated during the first
// sync). podWire reads the podInfo's fields straight from the wire (protowire: field numbers of
// k8s.io/api/core/v1/generated.proto, which Kubernetes never renumbers) and skips the rest
// without allocating; strings that pods share (namespace, node, service account, labels) are
// interned. Anything that is not a Pod or a PodList in protobuf (a watch's Status, a JSON answer)
// goes to the decoder it wraps, unchanged.

// protobufPrefix starts every protobuf object of the API server ("k8s\x00").
var protobufPrefix = []byte{0x6b, 0x38, 0x73, 0x00}

// podSerializer is the pods client's NegotiatedSerializer: the codec factory's, with its protobuf
// decoder in front of podWire.
type podSerializer struct{ runtime.NegotiatedSerializer }

// SupportedMediaTypes returns the wrapped serializer's media types, the protobuf one decoding
// pods with podWire.
func (s podSerializer) SupportedMediaTypes() []runtime.SerializerInfo {
	infos := slices.Clone(s.NegotiatedSerializer.SupportedMediaTypes())
	for i := range infos {
		if infos[i].MediaType == runtime.ContentTypeProtobuf {
			infos[i].Serializer = podWire{infos[i].Serializer}
		}
	}
	return infos
}

// podWire decodes Pods and PodLists into podInfos (podInfoList); everything else with base.
type podWire struct{ base runtime.Serializer }

// Encode encodes with the wrapped serializer (the agent never writes pods).
func (w podWire) Encode(obj runtime.Object, out io.Writer) error { return w.base.Encode(obj, out) }

// Identifier is the wrapped serializer's.
func (w podWire) Identifier() runtime.Identifier { return w.base.Identifier() }

// Decode decodes a protobuf Pod or PodList into a *podInfo or *podInfoList; anything else, or
// into a given object, with the wrapped decoder.
func (w podWire) Decode(data []byte, defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	if into != nil || !bytes.HasPrefix(data, protobufPrefix) {
		return w.base.Decode(data, defaults, into)
	}
	var apiVersion, kind, encoding []byte
	var raw []byte
	err := walk(data[len(protobufPrefix):], func(f field) error {
		switch f.num {
		case 1: // typeMeta
			return walk(f.b, func(t field) error {
				switch t.num {
				case 1:
					apiVersion = t.b
				case 2:
					kind = t.b
				}
				return nil
			})
		case 2:
			raw = f.b
		case 3:
			encoding = f.b
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("kube: protobuf envelope: %w", err)
	}
	if len(encoding) != 0 || string(apiVersion) != "v1" || (string(kind) != "Pod" && string(kind) != "PodList") {
		return w.base.Decode(data, defaults, into)
	}
	gvk := &schema.GroupVersionKind{Version: "v1", Kind: string(kind)}
	if string(kind) == "Pod" {
		p, err := decodePod(raw)
		if err != nil {
			return nil, gvk, err
		}
		return p, gvk, nil
	}
	l, err := decodePodList(raw)
	if err != nil {
		return nil, gvk, err
	}
	return l, gvk, nil
}

// podInfoList is a PodList as podWire decodes it.
type podInfoList struct {
	metav1.ListMeta
	Items []*podInfo
}

// GetObjectKind: a podInfoList carries no kind (the informer never asks).
func (l *podInfoList) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject copies the list and its items.
func (l *podInfoList) DeepCopyObject() runtime.Object {
	c := &podInfoList{ListMeta: *l.ListMeta.DeepCopy(), Items: make([]*podInfo, len(l.Items))}
	for i, p := range l.Items {
		c.Items[i] = p.DeepCopyObject().(*podInfo)
	}
	return c
}

// GetObjectKind: a podInfo carries no kind.
func (p *podInfo) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject copies p (its labels are shared: interned maps are never changed).
func (p *podInfo) DeepCopyObject() runtime.Object {
	c := *p
	c.ObjectMeta = *p.ObjectMeta.DeepCopy()
	c.Labels = p.Labels
	c.podIPs = slices.Clone(p.podIPs)
	c.probePorts = slices.Clone(p.probePorts)
	return &c
}

// field is one field of a protobuf message: its number, wire type, and value (b for the
// length-delimited ones, x for varints; neither for the others, which no field read here is:
// bytesField and varintField refuse them).
type field struct {
	num protowire.Number
	typ protowire.Type
	b   []byte
	x   uint64
}

// errWireType: a field the decoder reads came with another wire type than its schema's.
var errWireType = errors.New("wrong wire type")

// walk calls f for every field of the message in b, in order.
func walk(b []byte, f func(field) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		fl := field{num: num, typ: typ}
		switch typ {
		case protowire.BytesType:
			fl.b, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			fl.x, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := f(fl); err != nil {
			return err
		}
	}
	return nil
}

// bytesField and varintField check a read field's wire type.
func bytesField(f field) ([]byte, error) {
	if f.typ != protowire.BytesType {
		return nil, fmt.Errorf("field %d: %w", f.num, errWireType)
	}
	return f.b, nil
}

func varintField(f field) (uint64, error) {
	if f.typ != protowire.VarintType {
		return 0, fmt.Errorf("field %d: %w", f.num, errWireType)
	}
	return f.x, nil
}

func decodePodList(b []byte) (*podInfoList, error) {
	l := &podInfoList{}
	err := walk(b, func(f field) error {
		switch f.num {
		case 1: // metadata: ListMeta
			return nested(f, func(m field) error {
				var err error
				switch m.num {
				case 2:
					l.ResourceVersion, err = stringField(m)
				case 3:
					l.Continue, err = stringField(m)
				case 4:
					var x uint64
					x, err = varintField(m)
					n := int64(x)
					l.RemainingItemCount = &n
				}
				return err
			})
		case 2: // items
			v, err := bytesField(f)
			if err != nil {
				return err
			}
			p, err := decodePod(v)
			if err != nil {
				return err
			}
			l.Items = append(l.Items, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kube: PodList protobuf: %w", err)
	}
	return l, nil
}

// nested walks the message that field f holds.
func nested(f field, fn func(field) error) error {
	v, err := bytesField(f)
	if err != nil {
		return err
	}
	return walk(v, fn)
}

// varintOf returns the varint field num of the message f holds (0 when absent).
func varintOf(f field, num protowire.Number) (uint64, error) {
	var x uint64
	err := nested(f, func(g field) error {
		var err error
		if g.num == num {
			x, err = varintField(g)
		}
		return err
	})
	return x, err
}

func stringField(f field) (string, error) {
	v, err := bytesField(f)
	return string(v), err
}

func internField(f field) (string, error) {
	v, err := bytesField(f)
	return intern.Bytes(v), err
}

// controllerRef is what ownerName reads of a pod's controller.
type controllerRef struct{ kind, name string }

// decodePod reads a Pod's podInfo (infoOf's fields, as infoOf computes them).
func decodePod(b []byte) (*podInfo, error) {
	p := &podInfo{}
	var ctrl *controllerRef
	var labels map[string]string
	err := walk(b, func(f field) error {
		if f.num < 1 || f.num > 3 {
			return nil // a field a later Kubernetes may add
		}
		v, err := bytesField(f)
		if err != nil {
			return err
		}
		switch f.num {
		case 1:
			return decodeMeta(v, p, &labels, &ctrl)
		case 2:
			return decodeSpec(v, p)
		default:
			return decodeStatus(v, p)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("kube: Pod protobuf: %w", err)
	}
	p.Labels = intern.Labels(labels)
	p.owner = ownerOf(p.Name, p.Labels, ctrl)
	slices.Sort(p.probePorts)
	p.probePorts = slices.Compact(p.probePorts)
	return p, nil
}

func decodeMeta(b []byte, p *podInfo, labels *map[string]string, ctrl **controllerRef) error {
	return walk(b, func(f field) error {
		var err error
		switch f.num {
		case 1:
			p.Name, err = stringField(f)
		case 3:
			p.Namespace, err = internField(f)
		case 5:
			var s string
			s, err = stringField(f)
			p.UID = types.UID(s)
		case 6:
			p.ResourceVersion, err = stringField(f)
		case 8: // creationTimestamp: seconds (metav1.Time decodes no nanoseconds; nothing is zero)
			var secs uint64
			secs, err = varintOf(f, 1)
			p.CreationTimestamp = metav1.Time{}
			if len(f.b) != 0 {
				p.CreationTimestamp = metav1.NewTime(time.Unix(int64(secs), 0).Local())
			}
		case 11, 12: // labels, annotations: map entries {1: key, 2: value}
			var k, val string
			if err = nested(f, func(e field) error {
				var err error
				switch e.num {
				case 1:
					k, err = stringField(e)
				case 2:
					val, err = stringField(e)
				}
				return err
			}); err != nil {
				return err
			}
			if f.num == 11 {
				if *labels == nil {
					*labels = map[string]string{}
				}
				(*labels)[k] = val
			} else if k == metav1.InitialEventsAnnotationKey {
				// The one annotation the reflector reads: the bookmark that ends a watch list.
				p.Annotations = map[string]string{k: val}
			}
		case 13: // ownerReferences: the first controller is the pod's (metav1.GetControllerOf)
			var ref controllerRef
			var controller bool
			if err = nested(f, func(o field) error {
				var err error
				switch o.num {
				case 1:
					ref.kind, err = stringField(o)
				case 3:
					ref.name, err = stringField(o)
				case 6:
					var x uint64
					x, err = varintField(o)
					controller = x != 0
				}
				return err
			}); err != nil {
				return err
			}
			if controller && *ctrl == nil {
				*ctrl = &ref
			}
		}
		return err
	})
}

// ownerOf is ownerName for a decoded pod.
func ownerOf(name string, labels map[string]string, ctrl *controllerRef) string {
	if ctrl == nil {
		return name
	}
	return intern.String(ownerFrom(labels, ctrl.kind, ctrl.name))
}

func decodeSpec(b []byte, p *podInfo) error {
	return walk(b, func(f field) error {
		var err error
		switch f.num {
		case 2: // containers
			err = decodeContainer(f, p)
		case 8:
			p.serviceAccount, err = internField(f)
		case 10:
			p.node, err = internField(f)
		case 11:
			var x uint64
			x, err = varintField(f)
			p.hostNetwork = x != 0
		}
		return err
	})
}

// probePort is a probe's port before it is resolved against the container's ports: a number,
// or (named) a port's name.
type probePort struct {
	named bool
	num   int32
	name  string
}

// containerPort is what resolvePort reads of a container's port.
type containerPort struct {
	name string
	port int32
}

// decodeContainer appends the container's probe ports to p.probePorts (probePorts' rules: an
// httpGet, else a tcpSocket, else a grpc probe; exec probes open no connection; a named port is
// the first valid port of that name).
func decodeContainer(container field, p *podInfo) error {
	var probes []probePort
	var ports []containerPort
	err := nested(container, func(f field) error {
		switch f.num {
		case 6: // ports: ContainerPort {1: name, 3: containerPort}
			var cp containerPort
			if err := nested(f, func(c field) error {
				var err error
				switch c.num {
				case 1:
					cp.name, err = stringField(c)
				case 3:
					var x uint64
					x, err = varintField(c)
					cp.port = int32(x)
				}
				return err
			}); err != nil {
				return err
			}
			ports = append(ports, cp)
		case 10, 11, 22: // livenessProbe, readinessProbe, startupProbe
			pp, ok, err := decodeProbe(f)
			if err != nil {
				return err
			}
			if ok {
				probes = append(probes, pp)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, pp := range probes {
		if !pp.named {
			if pp.num > 0 && pp.num <= 65535 {
				p.probePorts = append(p.probePorts, uint16(pp.num))
			}
			continue
		}
		for _, cp := range ports {
			if cp.name == pp.name && cp.port > 0 && cp.port <= 65535 {
				p.probePorts = append(p.probePorts, uint16(cp.port))
				break
			}
		}
	}
	return nil
}

// decodeProbe returns a probe's port; ok is false for a probe that opens no connection.
func decodeProbe(probe field) (probePort, bool, error) {
	var httpGet, tcpSocket, grpc field
	var haveHTTP, haveTCP, haveGRPC bool
	err := nested(probe, func(f field) error {
		if f.num != 1 { // handler: ProbeHandler
			return nil
		}
		return nested(f, func(h field) error {
			switch h.num {
			case 2:
				httpGet, haveHTTP = h, true
			case 3:
				tcpSocket, haveTCP = h, true
			case 4:
				grpc, haveGRPC = h, true
			}
			return nil
		})
	})
	if err != nil {
		return probePort{}, false, err
	}
	switch {
	case haveHTTP:
		pp, err := actionPort(httpGet, 2)
		return pp, true, err
	case haveTCP:
		pp, err := actionPort(tcpSocket, 1)
		return pp, true, err
	case haveGRPC:
		port, err := varintOf(grpc, 1)
		return probePort{num: int32(port)}, true, err
	}
	return probePort{}, false, nil
}

// actionPort reads the IntOrString port (field num) of an httpGet or tcpSocket action.
func actionPort(action field, num protowire.Number) (probePort, error) {
	var pp probePort
	err := nested(action, func(f field) error {
		if f.num != num {
			return nil
		}
		return nested(f, func(i field) error { // IntOrString {1: type, 2: intVal, 3: strVal}
			var err error
			switch i.num {
			case 1:
				var x uint64
				x, err = varintField(i)
				pp.named = x != uint64(intstr.Int) // resolvePort: anything but Int is a name
			case 2:
				var x uint64
				x, err = varintField(i)
				pp.num = int32(x)
			case 3:
				pp.name, err = stringField(i)
			}
			return err
		})
	})
	return pp, err
}

func decodeStatus(b []byte, p *podInfo) error {
	return walk(b, func(f field) error {
		var err error
		switch f.num {
		case 1:
			var s string
			s, err = internField(f)
			p.phase = corev1.PodPhase(s)
		case 5:
			p.hostIP, err = internField(f)
		case 6:
			p.podIP, err = stringField(f)
		case 12: // podIPs: PodIP {1: ip}
			var ip string
			err = nested(f, func(i field) error {
				var err error
				if i.num == 1 {
					ip, err = stringField(i)
				}
				return err
			})
			p.podIPs = append(p.podIPs, ip)
		}
		return err
	})
}
