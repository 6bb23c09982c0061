package tunnel

import (
	"encoding/binary"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// linux/tls.h, which golang.org/x/sys/unix does not carry.
const (
	tlsTX              = 1
	tls13Version       = 0x0304
	tlsCipherAESGCM128 = 51
)

// ProbeKernelTLS says whether this kernel could take over the record layer of an HBONE
// connection (kTLS: the TLS upper-layer protocol on a TCP socket, then TLS 1.3 AES-GCM keys for
// sending), trying both on a loopback connection of its own. amesh's data path is user-space
// TLS; the agent logs this at start so that an operator sees what the node's kernel offers
// (a kernel built without CONFIG_TLS answers ENOENT to the first step).
func ProbeKernelTLS() error {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("tunnel: probe kernel TLS: %w", err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		return fmt.Errorf("tunnel: probe kernel TLS: %w", err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		return fmt.Errorf("tunnel: probe kernel TLS: %w", err)
	}
	defer s.Close()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return fmt.Errorf("tunnel: probe kernel TLS: %w", err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if serr = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_ULP, "tls"); serr != nil {
			serr = fmt.Errorf("TCP_ULP \"tls\" (the kernel needs CONFIG_TLS or the tls module): %w", serr)
			return
		}
		// Throwaway (zero) keys: the probe only asks whether the kernel takes TLS 1.3
		// AES-GCM-128. struct tls12_crypto_info_aes_gcm_128 of linux/tls.h: version and cipher
		// (u16s in the machine's order), then iv[8], key[16], salt[4],
		// rec_seq[8].
		var info [40]byte
		binary.NativeEndian.PutUint16(info[0:], tls13Version)
		binary.NativeEndian.PutUint16(info[2:], tlsCipherAESGCM128)
		if serr = unix.SetsockoptString(int(fd), unix.SOL_TLS, tlsTX, string(info[:])); serr != nil {
			serr = fmt.Errorf("TLS_TX with TLS 1.3 AES-GCM-128: %w", serr)
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("tunnel: probe kernel TLS: %w", err)
	}
	return nil
}
