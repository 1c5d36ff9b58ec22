package server

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/vmsup/vmsup/cmd/internal/api"
)

// console bridges the client's connection to the VM's serial console. The
// client asks with "Connection: Upgrade" and "Upgrade: vmsup-console"; the
// daemon connects to the console first (so that errors are ordinary JSON
// answers), then answers 101 Switching Protocols and copies raw bytes both
// ways until either side closes.
func (s *Server) console(w http.ResponseWriter, r *http.Request, name string) {
	if _, err := query(r); err != nil {
		writeError(w, err)
		return
	}
	if !headerHas(r.Header, "Connection", "upgrade") || !strings.EqualFold(r.Header.Get("Upgrade"), api.ConsoleProtocol) {
		writeError(w, withStatus(http.StatusUpgradeRequired,
			fmt.Errorf("the console route needs the headers \"Connection: Upgrade\" and \"Upgrade: %s\"", api.ConsoleProtocol)))
		return
	}
	select {
	case <-s.done:
		writeError(w, withStatus(http.StatusServiceUnavailable, errClosing))
		return
	default:
	}
	vm, err := s.drv.Domain(name).Console(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		vm.Close()
		writeError(w, fmt.Errorf("console: %w", err))
		return
	}
	if !s.track(vm, client) {
		vm.Close()
		client.Close()
		return
	}
	defer s.untrack(vm, client)
	resp := "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + api.ConsoleProtocol + "\r\n" +
		api.HeaderRequestID + ": " + w.Header().Get(api.HeaderRequestID) + "\r\n\r\n"
	if _, err := brw.WriteString(resp); err != nil {
		return
	}
	if err := brw.Flush(); err != nil {
		return
	}
	bridge(client, brw.Reader, vm)
}

// bridge copies client → vm and vm → client until one side ends, then
// closes both. from is the client's reader, which may hold bytes already
// buffered by the HTTP server.
func bridge(client net.Conn, from io.Reader, vm net.Conn) {
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			client.Close()
			vm.Close()
		})
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(vm, from)
		closeBoth()
	}()
	_, _ = io.Copy(client, vm)
	closeBoth()
	wg.Wait()
}

// track registers the two ends of a console session, so that Close can end
// it; it reports false when the server is closing.
func (s *Server) track(conns ...io.Closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
		return false
	default:
	}
	for _, c := range conns {
		s.conns[c] = struct{}{}
	}
	s.sessions.Add(1)
	return true
}

func (s *Server) untrack(conns ...io.Closer) {
	s.mu.Lock()
	for _, c := range conns {
		delete(s.conns, c)
	}
	s.mu.Unlock()
	s.sessions.Done()
}

// headerHas reports whether the comma-separated header key holds token
// (case-insensitive).
func headerHas(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
