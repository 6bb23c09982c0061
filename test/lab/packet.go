package lab

import (
	"bytes"
	"encoding/binary"
	"net/netip"
)

// Packet is an IPv4 TCP segment seen on the underlay.
type Packet struct {
	Src, Dst netip.AddrPort
	Payload  []byte // the TCP payload, possibly empty (a SYN, an ACK)
}

const (
	etherHeader = 14
	etherIPv4   = 0x0800
	etherVLAN   = 0x8100
	protoTCP    = 6
)

// parseFrame parses an Ethernet frame holding an IPv4 TCP segment; ok is false for anything
// else (ARP, IPv6, UDP, fragments, runts).
func parseFrame(f []byte) (p Packet, ok bool) {
	if len(f) < etherHeader {
		return p, false
	}
	typ, ip := binary.BigEndian.Uint16(f[12:14]), f[etherHeader:]
	if typ == etherVLAN && len(ip) >= 4 {
		typ, ip = binary.BigEndian.Uint16(ip[2:4]), ip[4:]
	}
	if typ != etherIPv4 || len(ip) < 20 || ip[0]>>4 != 4 || ip[9] != protoTCP {
		return p, false
	}
	ihl := int(ip[0]&0x0f) * 4
	// A fragment's TCP header may be elsewhere, and TCP here never fragments (PMTU discovery).
	if frag := binary.BigEndian.Uint16(ip[6:8]); frag&0x3fff != 0 {
		return p, false
	}
	// A total length of 0 is a BIG TCP super-segment's; one past the captured bytes is a
	// truncated capture: take what there is.
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if total == 0 || total > len(ip) {
		total = len(ip)
	}
	if ihl < 20 || total < ihl+20 {
		return p, false
	}
	tcp := ip[ihl:total]
	off := int(tcp[12]>>4) * 4
	if off < 20 || off > len(tcp) {
		return p, false
	}
	src, _ := netip.AddrFromSlice(ip[12:16])
	dst, _ := netip.AddrFromSlice(ip[16:20])
	return Packet{
		Src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:2])),
		Dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:4])),
		Payload: tcp[off:],
	}, true
}

// ContainsPayload reports whether marker appears in the byte stream of any one flow (a source
// and destination address and port) of pkts: their payloads, concatenated in the order of pkts,
// which is the order of capture. A marker split across segments is found; bytes of two flows, or
// of a flow's two directions, are never joined. As with bytes.Contains, an empty marker is
// found in anything. Retransmitted bytes are seen twice, which can only find more.
func ContainsPayload(pkts []Packet, marker []byte) bool {
	if len(marker) == 0 {
		return true
	}
	type flow struct{ src, dst netip.AddrPort }
	keep := len(marker) - 1 // the most of a marker a flow's past can hold
	tails := map[flow][]byte{}
	for _, p := range pkts {
		if len(p.Payload) == 0 {
			continue
		}
		f := flow{p.Src, p.Dst}
		s := append(tails[f], p.Payload...)
		if bytes.Contains(s, marker) {
			return true
		}
		if len(s) > keep {
			s = bytes.Clone(s[len(s)-keep:])
		}
		tails[f] = s
	}
	return false
}
