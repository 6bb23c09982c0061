// Command testapp is the one program of the real-node test's images: the sandbox ("pause") image
// that containerd starts every pod with, and the app image whose pods serve and call each other.
// It is static (no libc in the image), and every mode is bounded in time and count.
//
//	testapp pause                      wait for SIGTERM/SIGINT (the pod sandbox)
//	testapp serve -addr :8080          HTTP: answer every request with "<pod> <caller>";
//	                                   -first URL: GET it once before serving, print the result
//	testapp get -url URL [-n 1]        GET it n times (or -method); print each body; exit 1 on any
//	                                   failure (a status other than 200 is one, printed)
//	testapp loop -addr A -d 30s        connect, write, read back, close, every 20 ms for d;
//	                                   print "ok N failed M", the last failure's time (RFC 3339)
//	                                   and the first failures
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testapp pause|serve|get|loop [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch os.Args[1] {
	case "pause":
		<-ctx.Done()
	case "serve":
		err = serve(ctx, os.Args[2:])
	case "get":
		err = get(ctx, os.Args[2:])
	case "loop":
		err = loop(ctx, os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "testapp:", err)
		os.Exit(1)
	}
}

// serve answers HTTP on addr with the pod's name and the caller's address, and echoes raw TCP on
// addr's port + 1 (for loop), until ctx ends.
func serve(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := fs.String("addr", ":8080", "HTTP listen address; the echo port is one above")
	first := fs.String("first", "", "GET this URL once at start, before serving, and print the answer")
	fs.Parse(args)
	if *first != "" {
		// The container's very first connection: it shows whether the pod was in the mesh
		// before its containers started.
		client := &http.Client{Timeout: 3 * time.Second}
		resp, err := client.Get(*first)
		if err != nil {
			fmt.Println("first: error:", err)
		} else {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<12))
			resp.Body.Close()
			fmt.Printf("first: %s %s", resp.Status, b)
		}
	}
	pod := os.Getenv("POD_NAME")
	if pod == "" {
		pod, _ = os.Hostname()
	}
	host, port, err := net.SplitHostPort(*addr)
	if err != nil {
		return err
	}
	var p int
	fmt.Sscan(port, &p)
	echo, err := net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(p+1)))
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.Copy(c, io.LimitReader(c, 1<<20))
			}()
		}
	}()
	srv := &http.Server{Addr: *addr, ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s\n", pod, r.RemoteAddr)
	})}
	go func() { <-ctx.Done(); echo.Close(); srv.Close() }()
	fmt.Println("serving", *addr, "echo", echo.Addr())
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// get GETs url n times, printing each answer's body.
func get(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	url := fs.String("url", "", "URL")
	n := fs.Int("n", 1, "requests (at most 1000)")
	timeout := fs.Duration("timeout", 3*time.Second, "per request")
	method := fs.String("method", http.MethodGet, "HTTP method")
	fs.Parse(args)
	client := &http.Client{Timeout: *timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := 0; i < min(*n, 1000); i++ {
		req, err := http.NewRequestWithContext(ctx, *method, *url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s %s: %s: %s", *method, *url, resp.Status, b)
		}
		fmt.Printf("%s", b)
	}
	return nil
}

// loop connects to addr every interval for d, writes a line and reads it back, and reports how
// many round trips worked and how many failed.
func loop(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loop", flag.ExitOnError)
	addr := fs.String("addr", "", "echo address host:port")
	d := fs.Duration("d", 30*time.Second, "duration (at most 5m)")
	every := fs.Duration("every", 20*time.Millisecond, "interval")
	fs.Parse(args)
	ctx, cancel := context.WithTimeout(ctx, min(*d, 5*time.Minute))
	defer cancel()
	ok, failed := 0, 0
	var first []string
	var last time.Time
	t := time.NewTicker(*every)
	defer t.Stop()
	msg := []byte("amesh\n")
	for {
		select {
		case <-ctx.Done():
			fmt.Printf("ok %d failed %d\n", ok, failed)
			if failed > 0 {
				fmt.Println("last-failure", last.Format(time.RFC3339Nano))
			}
			for _, f := range first {
				fmt.Println(f)
			}
			return nil
		case <-t.C:
		}
		err := func() error {
			c, err := net.DialTimeout("tcp", *addr, time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Write(msg); err != nil {
				return err
			}
			back := make([]byte, len(msg))
			if _, err := io.ReadFull(c, back); err != nil {
				return err
			}
			if string(back) != string(msg) {
				return fmt.Errorf("echo %q", back)
			}
			return nil
		}()
		if err != nil {
			failed++
			last = time.Now()
			if len(first) < 10 {
				first = append(first, time.Now().Format("15:04:05.000")+" "+err.Error())
			}
			continue
		}
		ok++
	}
}
