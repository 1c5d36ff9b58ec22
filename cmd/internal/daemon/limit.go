package daemon

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultMaxConnections bounds the connections the daemon holds at once
// when Config.MaxConnections is zero.
const DefaultMaxConnections = 512

// maxRejecting bounds the goroutines that answer refused connections; past
// it a refused connection is closed without an answer.
const maxRejecting = 64

// rejectTimeout bounds the answer to a refused connection.
const rejectTimeout = time.Second

// limitListener holds at most max connections at once. A connection past
// the limit is not queued: it gets a 503 that says why, and is closed.
type limitListener struct {
	net.Listener
	max       int
	active    atomic.Int64
	rejecting atomic.Int64
	rejected  atomic.Uint64
	wg        sync.WaitGroup
}

func newLimitListener(ln net.Listener, max int) *limitListener {
	return &limitListener{Listener: ln, max: max}
}

// Accept returns the next connection within the limit; connections past it
// are answered and closed meanwhile.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.active.Add(1) <= int64(l.max) {
			return &limitConn{Conn: c, l: l}, nil
		}
		l.active.Add(-1)
		l.rejected.Add(1)
		if l.rejecting.Add(1) > maxRejecting {
			l.rejecting.Add(-1)
			_ = c.Close()
			continue
		}
		l.wg.Add(1)
		go l.reject(c)
	}
}

// reject answers a connection past the limit with 503. It reads what the
// client sent first (briefly), so that closing does not reset the
// connection before the client reads the answer.
func (l *limitListener) reject(c net.Conn) {
	defer l.wg.Done()
	defer l.rejecting.Add(-1)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(rejectTimeout))
	buf := make([]byte, 4096)
	_, _ = c.Read(buf)
	body := fmt.Sprintf(`{"error":"vmsup daemon: too many connections (limit %d, --max-connections); try again later"}`+"\n", l.max)
	_, _ = fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	if uc, ok := c.(*net.UnixConn); ok {
		_ = uc.CloseWrite()
		_, _ = c.Read(buf)
	}
}

// Close closes the listener and waits for the refusals in progress.
func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.wg.Wait()
	return err
}

// limitConn gives its slot back when closed.
type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

// Close closes the connection and frees its slot, once.
func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.active.Add(-1) })
	return err
}

// SyscallConn exposes the socket, for its peer's credentials.
func (c *limitConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("%T is not a socket", c.Conn)
	}
	return sc.SyscallConn()
}
