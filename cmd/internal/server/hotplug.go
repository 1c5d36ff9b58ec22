package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
)

// maxDetachTimeout bounds a detach's wait for the guest.
const maxDetachTimeout = time.Hour

func fromLive(l *domain.Live) *api.Live {
	if l == nil {
		return nil
	}
	out := &api.Live{Disks: make([]api.LiveDisk, len(l.Disks)), NICs: make([]api.LiveNIC, len(l.NICs)), Ports: l.Ports, Next: l.Next}
	for i, d := range l.Disks {
		out.Disks[i] = fromLiveDisk(d)
	}
	for i, n := range l.NICs {
		out.NICs[i] = fromLiveNIC(n)
	}
	return out
}

func fromLiveDisk(d domain.LiveDisk) api.LiveDisk {
	return api.LiveDisk{Node: d.Node, Path: d.Path, Format: d.Format, ReadOnly: d.ReadOnly, Bus: d.Bus, Hotplugged: d.Hotplugged}
}

func fromLiveNIC(n domain.LiveNIC) api.LiveNIC {
	return api.LiveNIC{Device: n.Device, Netdev: n.Netdev, Type: n.Type, MAC: n.MAC, Forwards: n.Forwards, Bus: n.Bus, Hotplugged: n.Hotplugged}
}

func fromDeviceResult(res *driver.DeviceResult) api.DeviceResult {
	out := api.DeviceResult{Live: res.Live, Config: res.Config}
	if res.Disk != nil {
		d := fromLiveDisk(*res.Disk)
		out.Disk = &d
	}
	if res.NIC != nil {
		n := fromLiveNIC(*res.NIC)
		out.NIC = &n
	}
	return out
}

// decodeStrict reads the request body into v: one JSON object, no
// unknown members, nothing after it.
func (s *Server) decodeStrict(w http.ResponseWriter, r *http.Request, v any) error {
	if _, err := query(r); err != nil {
		return err
	}
	data, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest(fmt.Errorf("request body: %v", err))
	}
	if dec.More() {
		return badRequest(fmt.Errorf("request body: trailing data after the object"))
	}
	return nil
}

func detachTimeout(v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 || d > maxDetachTimeout {
		return 0, &domain.FieldError{Field: "timeout", Problem: fmt.Sprintf("%q is not a duration between 0 and %s", v, maxDetachTimeout)}
	}
	return d, nil
}

func (s *Server) writeDevice(w http.ResponseWriter, res *driver.DeviceResult, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, fromDeviceResult(res))
}

func (s *Server) attachDisk(w http.ResponseWriter, r *http.Request, name string) {
	var req api.AttachDiskRequest
	if err := s.decodeStrict(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	res, err := s.drv.Domain(name).AttachDisk(r.Context(), req.Path, driver.DiskOptions{Format: req.Format, ReadOnly: req.ReadOnly,
		DeviceOptions: driver.DeviceOptions{Live: req.Live, Config: req.Config}})
	s.writeDevice(w, res, err)
}

func (s *Server) attachNIC(w http.ResponseWriter, r *http.Request, name string) {
	var req api.AttachNICRequest
	if err := s.decodeStrict(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	res, err := s.drv.Domain(name).AttachNIC(r.Context(), domain.Network{Type: req.Type, MAC: req.MAC, Forwards: req.Forwards},
		driver.DeviceOptions{Live: req.Live, Config: req.Config})
	s.writeDevice(w, res, err)
}

func (s *Server) detach(disk bool) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, r *http.Request, name string) {
		var req api.DetachRequest
		if err := s.decodeStrict(w, r, &req); err != nil {
			writeError(w, err)
			return
		}
		timeout, err := detachTimeout(req.Timeout)
		if err != nil {
			writeError(w, err)
			return
		}
		opts := driver.DeviceOptions{Live: req.Live, Config: req.Config, Timeout: timeout}
		var res *driver.DeviceResult
		if disk {
			res, err = s.drv.Domain(name).DetachDisk(r.Context(), req.Target, opts)
		} else {
			res, err = s.drv.Domain(name).DetachNIC(r.Context(), req.Target, opts)
		}
		s.writeDevice(w, res, err)
	}
}

func (s *Server) definition(w http.ResponseWriter, r *http.Request, name string) {
	if _, err := query(r); err != nil {
		writeError(w, err)
		return
	}
	spec, err := s.drv.Domain(name).Definition(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, spec)
}
