package testkit

import "encoding/json"

// SnapshotTags reads the internal snapshot tags of block node node from
// the return value of QMP query-block.
func SnapshotTags(queryBlock json.RawMessage, node string) ([]string, error) {
	var devs []struct {
		Inserted struct {
			NodeName string `json:"node-name"`
			Image    struct {
				Snapshots []struct{ Name string } `json:"snapshots"`
			} `json:"image"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(queryBlock, &devs); err != nil {
		return nil, err
	}
	var tags []string
	for _, dv := range devs {
		if dv.Inserted.NodeName == node {
			for _, s := range dv.Inserted.Image.Snapshots {
				tags = append(tags, s.Name)
			}
		}
	}
	return tags, nil
}

// JobIDs reads the job ids from the return value of QMP query-jobs.
func JobIDs(queryJobs json.RawMessage) ([]string, error) {
	var jobs []struct{ ID string }
	if err := json.Unmarshal(queryJobs, &jobs); err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(jobs))
	for _, j := range jobs {
		ids = append(ids, j.ID)
	}
	return ids, nil
}
