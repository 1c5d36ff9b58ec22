package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"

	yaml2 "go.yaml.in/yaml/v2"
)

// readSpec reads a spec file ("-" for stdin) and resolves the relative
// paths in it against the file's directory (the working directory for
// stdin): kernel, initrd, disks[].path and serial.path. The daemon only
// accepts absolute paths, and resolves nothing itself, since it does not
// run where the CLI runs. A spec without relative paths is sent as it is;
// one that does not parse is sent as it is too, so that the daemon reports
// its problems.
func readSpec(file string, stdin io.Reader) ([]byte, error) {
	var data []byte
	var err error
	base := "."
	if file == "-" {
		data, err = io.ReadAll(io.LimitReader(stdin, 4<<20))
	} else {
		data, err = os.ReadFile(file)
		base = filepath.Dir(file)
	}
	if err != nil {
		return nil, fmt.Errorf("read spec: %w", err)
	}
	abs, err := filepath.Abs(base)
	if err != nil {
		return nil, err
	}
	return resolveSpecPaths(data, abs), nil
}

// resolveSpecPaths rewrites relative paths of a YAML or JSON spec against
// base, keeping the order of keys. It returns data unchanged when there is
// nothing to resolve or the spec does not parse.
func resolveSpecPaths(data []byte, base string) []byte {
	dec := yaml2.NewDecoder(bytes.NewReader(data))
	dec.SetStrict(true)
	var doc, extra yaml2.MapSlice
	if err := dec.Decode(&doc); err != nil {
		return data
	}
	if err := dec.Decode(&extra); err != io.EOF {
		return data // more than one document: the daemon says so
	}
	changed := false
	resolve := func(v any) any {
		s, ok := v.(string)
		if !ok || s == "" || filepath.IsAbs(s) {
			return v
		}
		changed = true
		return filepath.Join(base, s)
	}
	for i, item := range doc {
		key, _ := item.Key.(string)
		switch key {
		case "kernel", "initrd":
			doc[i].Value = resolve(item.Value)
		case "disks":
			disks, ok := item.Value.([]any)
			if !ok {
				continue
			}
			for _, d := range disks {
				m, ok := d.(yaml2.MapSlice)
				if !ok {
					continue
				}
				for j, f := range m {
					if k, _ := f.Key.(string); k == "path" || k == "image" {
						m[j].Value = resolve(f.Value)
					}
				}
			}
		case "cloud_init":
			m, ok := item.Value.(yaml2.MapSlice)
			if !ok {
				continue
			}
			for j, f := range m {
				if k, _ := f.Key.(string); k == "user_data_file" {
					m[j].Value = resolve(f.Value)
				}
			}
		case "serial":
			m, ok := item.Value.(yaml2.MapSlice)
			if !ok {
				continue
			}
			for j, f := range m {
				if k, _ := f.Key.(string); k == "path" {
					m[j].Value = resolve(f.Value)
				}
			}
		}
	}
	if !changed {
		return data
	}
	out, err := yaml2.Marshal(doc)
	if err != nil {
		return data
	}
	return out
}

// withDefault adds `key: value` to a spec that does not set key; `vmsup up`
// uses it to make on_crash default to restart. A spec that does not parse
// is returned as it is, for the daemon to report.
func withDefault(data []byte, key, value string) []byte {
	var doc yaml2.MapSlice
	if err := yaml2.Unmarshal(data, &doc); err != nil {
		return data
	}
	for _, item := range doc {
		if k, ok := item.Key.(string); ok && k == key {
			return data
		}
	}
	doc = append(doc, yaml2.MapItem{Key: key, Value: value})
	out, err := yaml2.Marshal(doc)
	if err != nil {
		return data
	}
	return out
}
