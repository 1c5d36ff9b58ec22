package overlay

import (
	"context"
	"encoding/json"
)

// Snapshots returns the internal snapshot tags of the image at path,
// read with "qemu-img info --force-share --output=json" (so that it also
// answers while QEMU has the image open, and never takes its lock).
func (q QemuImg) Snapshots(ctx context.Context, path string) ([]string, error) {
	if err := checkPath("image", path); err != nil {
		return nil, err
	}
	args := []string{"info", "--force-share", "--output=json", path}
	out, err := q.run(ctx, args...)
	if err != nil {
		return nil, err
	}
	var j struct {
		Format    string `json:"format"`
		Snapshots []struct {
			Name string `json:"name"`
		} `json:"snapshots"`
	}
	if err := json.Unmarshal(out, &j); err != nil {
		return nil, &RunError{Args: args, Err: err}
	}
	tags := make([]string, 0, len(j.Snapshots))
	for _, s := range j.Snapshots {
		tags = append(tags, s.Name)
	}
	return tags, nil
}
