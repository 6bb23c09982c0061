package tunnel

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2/hpack"
)

// Request is one HBONE CONNECT as the server sees it.
type Request struct {
	// Authority is the original destination the client asked for (:authority).
	Authority netip.AddrPort
	// Peer is the client's verified SPIFFE ID.
	Peer spiffeid.ID
	// Client is the TCP address the HBONE connection came from: the source pod's IP, since
	// HBONE is dialed from inside the source pod's netns.
	Client netip.AddrPort
	// PeerCert is the client's verified leaf certificate (serial and expiry, for logs).
	PeerCert *x509.Certificate
	// Local is the SPIFFE ID the server presented (the identity of the listener that accepted).
	Local spiffeid.ID
	// Headers that Istio's ztunnel sends, when present.
	Baggage, Traceparent, Forwarded string
}

// parseConnect validates a CONNECT request's header list (RFC 9113 §8.5): :method CONNECT,
// :authority a literal ip:port, no :scheme, :path or :protocol. It opens no socket and is the
// target of FuzzParseConnect.
func parseConnect(fields []hpack.HeaderField, truncated bool) (Request, Reason, error) {
	listSize := 0
	for _, f := range fields {
		listSize += int(f.Size()) // RFC 9113 §6.5.2: name + value + 32 per field
	}
	if truncated || listSize > maxHeaderList {
		return Request{}, ReasonHeadersTooLarge, fmt.Errorf("header list over %d bytes", maxHeaderList)
	}
	var req Request
	var method, authority string
	var seenMethod, seenAuthority bool
	for _, f := range fields {
		if !strings.HasPrefix(f.Name, ":") {
			switch f.Name {
			case "baggage":
				req.Baggage = f.Value
			case "traceparent":
				req.Traceparent = f.Value
			case "forwarded":
				req.Forwarded = f.Value
			}
			continue
		}
		switch f.Name {
		case ":method":
			if seenMethod {
				return Request{}, ReasonBadRequest, errors.New("duplicate :method")
			}
			method, seenMethod = f.Value, true
		case ":authority":
			if seenAuthority {
				return Request{}, ReasonBadRequest, errors.New("duplicate :authority")
			}
			authority, seenAuthority = f.Value, true
		case ":scheme", ":path", ":protocol":
			if method != "" && method != "CONNECT" {
				return Request{}, ReasonBadMethod, fmt.Errorf("method %q, only CONNECT is served", method)
			}
			return Request{}, ReasonBadRequest, fmt.Errorf("%s not allowed in a CONNECT request", f.Name)
		default:
			return Request{}, ReasonBadRequest, fmt.Errorf("unknown pseudo-header %q", f.Name)
		}
	}
	if method != "CONNECT" {
		return Request{}, ReasonBadMethod, fmt.Errorf("method %q, only CONNECT is served", method)
	}
	if !seenAuthority {
		return Request{}, ReasonBadAuthority, errors.New("no :authority")
	}
	ap, err := netip.ParseAddrPort(authority)
	if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" || !ap.Addr().IsValid() || ap.Addr().IsUnspecified() {
		return Request{}, ReasonBadAuthority, fmt.Errorf(":authority %q is not a literal ip:port", authority)
	}
	req.Authority = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	return req, ReasonNone, nil
}

// connectHeaders builds the request header list a client sends, as ztunnel does.
func connectHeaders(t *Target) []hpack.HeaderField {
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "CONNECT"},
		{Name: ":authority", Value: t.Authority.String()},
	}
	if t.Baggage != "" {
		fields = append(fields, hpack.HeaderField{Name: "baggage", Value: t.Baggage})
	}
	if t.Traceparent != "" {
		fields = append(fields, hpack.HeaderField{Name: "traceparent", Value: t.Traceparent})
	}
	if t.Forwarded != "" {
		fields = append(fields, hpack.HeaderField{Name: "forwarded", Value: t.Forwarded})
	}
	return fields
}
