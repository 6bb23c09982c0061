package lab

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// frame builds an Ethernet frame around an IPv4 header (ihl words, fragment field frag,
// protocol proto) and a TCP header (off words) with payload.
type frame struct {
	etherType   uint16
	vlan        bool
	version     byte
	ihl, tcpOff int
	frag        uint16
	proto       byte
	totalLen    int // 0: computed; -1: zero, as BIG TCP
	payload     string
}

func (f frame) bytes() []byte {
	if f.etherType == 0 {
		f.etherType = etherIPv4
	}
	if f.version == 0 {
		f.version = 4
	}
	if f.ihl == 0 {
		f.ihl = 5
	}
	if f.tcpOff == 0 {
		f.tcpOff = 5
	}
	if f.proto == 0 {
		f.proto = protoTCP
	}
	b := make([]byte, 12, 64)
	if f.vlan {
		b = binary.BigEndian.AppendUint16(b, etherVLAN)
		b = append(b, 0, 7)
	}
	b = binary.BigEndian.AppendUint16(b, f.etherType)
	ip := make([]byte, f.ihl*4)
	ip[0] = f.version<<4 | byte(f.ihl)
	total := f.ihl*4 + f.tcpOff*4 + len(f.payload)
	switch f.totalLen {
	case 0:
		binary.BigEndian.PutUint16(ip[2:], uint16(total))
	case -1:
	default:
		binary.BigEndian.PutUint16(ip[2:], uint16(f.totalLen))
	}
	binary.BigEndian.PutUint16(ip[6:], f.frag)
	ip[8], ip[9] = 64, f.proto
	copy(ip[12:], []byte{10, 20, 1, 2})
	copy(ip[16:], []byte{10, 20, 2, 2})
	tcp := make([]byte, f.tcpOff*4)
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 8080)
	tcp[12] = byte(f.tcpOff) << 4
	b = append(append(append(b, ip...), tcp...), f.payload...)
	return b
}

func TestParseFrame(t *testing.T) {
	src, dst := netip.MustParseAddrPort("10.20.1.2:40000"), netip.MustParseAddrPort("10.20.2.2:8080")
	for _, tt := range []struct {
		name    string
		frame   []byte
		ok      bool
		payload string
	}{
		{"segment", frame{payload: "hello"}.bytes(), true, "hello"},
		{"no payload", frame{}.bytes(), true, ""},
		{"IP and TCP options", frame{ihl: 6, tcpOff: 8, payload: "hello"}.bytes(), true, "hello"},
		{"VLAN tag", frame{vlan: true, payload: "hello"}.bytes(), true, "hello"},
		{"Ethernet padding beyond the IP length", append(frame{payload: "hi"}.bytes(), 0, 0, 0, 0), true, "hi"},
		{"BIG TCP (length 0)", frame{totalLen: -1, payload: "big"}.bytes(), true, "big"},
		{"truncated capture", frame{totalLen: 9000, payload: "cut"}.bytes(), true, "cut"},
		{"DF is not a fragment", frame{frag: 0x4000, payload: "df"}.bytes(), true, "df"},
		{"first fragment", frame{frag: 0x2000, payload: "x"}.bytes(), false, ""},
		{"later fragment", frame{frag: 0x0010, payload: "x"}.bytes(), false, ""},
		{"UDP", frame{proto: 17, payload: "x"}.bytes(), false, ""},
		{"ARP", frame{etherType: 0x0806}.bytes(), false, ""},
		{"IPv6", frame{etherType: 0x86dd}.bytes(), false, ""},
		{"IP version 6 in an IPv4 frame", frame{version: 6}.bytes(), false, ""},
		{"IHL below 5", frame{ihl: 4}.bytes(), false, ""},
		{"TCP offset below 5", frame{tcpOff: 4}.bytes(), false, ""},
		{"IP length shorter than the headers", frame{totalLen: 30}.bytes(), false, ""},
		{"runt", []byte{1, 2, 3}, false, ""},
		{"no IP header", frame{}.bytes()[:20], false, ""},
		{"TCP header cut", frame{}.bytes()[:14+20+10], false, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, ok := parseFrame(tt.frame)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if !ok {
				return
			}
			if p.Src != src || p.Dst != dst || string(p.Payload) != tt.payload {
				t.Errorf("got %s -> %s %q, want %s -> %s %q", p.Src, p.Dst, p.Payload, src, dst, tt.payload)
			}
		})
	}
}

func TestContainsPayload(t *testing.T) {
	a, b := netip.MustParseAddrPort("10.20.1.2:40000"), netip.MustParseAddrPort("10.20.2.2:8080")
	c := netip.MustParseAddrPort("10.20.1.3:40001")
	seg := func(src, dst netip.AddrPort, s string) Packet { return Packet{Src: src, Dst: dst, Payload: []byte(s)} }
	for _, tt := range []struct {
		name   string
		pkts   []Packet
		marker string
		want   bool
	}{
		{"in one segment", []Packet{seg(a, b, "xxSECRETxx")}, "SECRET", true},
		{"absent", []Packet{seg(a, b, "xxSECRxx"), seg(a, b, "ETxx")}, "SECRET", false},
		{"split across two", []Packet{seg(a, b, "xxSEC"), seg(a, b, "RETxx")}, "SECRET", true},
		{"split across many small", []Packet{seg(a, b, "S"), seg(a, b, "E"), seg(a, b, "CR"), seg(a, b, ""), seg(a, b, "E"), seg(a, b, "Tx")}, "SECRET", true},
		{"split, other flows between", []Packet{seg(a, b, "xxSEC"), seg(c, b, "zzz"), seg(b, a, "ack"), seg(a, b, "RET")}, "SECRET", true},
		{"halves in two flows", []Packet{seg(a, b, "xxSEC"), seg(c, b, "RETxx")}, "SECRET", false},
		{"halves in two directions", []Packet{seg(a, b, "xxSEC"), seg(b, a, "RETxx")}, "SECRET", false},
		{"out of order is not joined", []Packet{seg(a, b, "RET"), seg(a, b, "SEC")}, "SECRET", false},
		{"long stream before", []Packet{seg(a, b, "0123456789abcdefghijSE"), seg(a, b, "CRET")}, "SECRET", true},
		{"a one-byte marker", []Packet{seg(a, b, "abc")}, "b", true},
		{"an empty marker", nil, "", true},
		{"no packets", nil, "SECRET", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := ContainsPayload(tt.pkts, []byte(tt.marker)); got != tt.want {
				t.Errorf("ContainsPayload(%q) = %v, want %v", tt.marker, got, tt.want)
			}
		})
	}
}
