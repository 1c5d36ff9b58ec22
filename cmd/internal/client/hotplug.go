package client

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/vmsup/vmsup/cmd/internal/api"
)

// AttachDisk attaches a disk file to a VM (POST .../disks).
func (c *Client) AttachDisk(ctx context.Context, name string, req api.AttachDiskRequest) (*api.DeviceResult, error) {
	return c.device(ctx, name, "disks", req)
}

// DetachDisk detaches a VM's disk (POST .../disks/detach).
func (c *Client) DetachDisk(ctx context.Context, name string, req api.DetachRequest) (*api.DeviceResult, error) {
	return c.device(ctx, name, "disks/detach", req)
}

// AttachNIC attaches a NIC to a VM (POST .../nics).
func (c *Client) AttachNIC(ctx context.Context, name string, req api.AttachNICRequest) (*api.DeviceResult, error) {
	return c.device(ctx, name, "nics", req)
}

// DetachNIC detaches a VM's NIC (POST .../nics/detach).
func (c *Client) DetachNIC(ctx context.Context, name string, req api.DetachRequest) (*api.DeviceResult, error) {
	return c.device(ctx, name, "nics/detach", req)
}

// Definition returns a VM's persistent definition, as JSON.
func (c *Client) Definition(ctx context.Context, name string) (json.RawMessage, error) {
	var out json.RawMessage
	return out, c.call(ctx, http.MethodGet, domainPath(name, "definition"), nil, nil, "", &out)
}

func (c *Client) device(ctx context.Context, name, route string, req any) (*api.DeviceResult, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var out api.DeviceResult
	return &out, c.call(ctx, http.MethodPost, domainPath(name, route), nil, body, "application/json", &out)
}
