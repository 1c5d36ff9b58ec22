package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmsup/vmsup/domain"
)

// store keeps definitions as files under <state>/domains/<name>.json. Every
// write is atomic: temp file, fsync, rename, fsync of the directory. A crash
// at any instant leaves the old file or the new one.
type store struct {
	dir string
}

func newStore(stateDir string) (*store, error) {
	dir := filepath.Join(stateDir, "domains")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	return &store{dir: dir}, nil
}

func (s *store) path(name string) string { return filepath.Join(s.dir, name+".json") }

// save writes spec atomically.
func (s *store) save(spec *domain.Spec) error {
	if err := domain.ValidateName(spec.Name); err != nil {
		return err
	}
	data, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return fmt.Errorf("encode definition of %q: %w", spec.Name, err)
	}
	return writeFileAtomic(s.path(spec.Name), append(data, '\n'))
}

// remove deletes a definition; a missing file is not an error.
func (s *store) remove(name string) error {
	if err := domain.ValidateName(name); err != nil {
		return err
	}
	if err := os.Remove(s.path(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove definition of %q: %w", name, err)
	}
	if err := os.Remove(s.statusPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove status of %q: %w", name, err)
	}
	return syncDir(s.dir)
}

// load reads one definition.
func (s *store) load(name string) (*domain.Spec, error) {
	if err := domain.ValidateName(name); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(s.path(name))
	if err != nil {
		return nil, err
	}
	spec, err := domain.ParseSpec(data)
	if err != nil {
		return nil, fmt.Errorf("definition %s: %w", s.path(name), err)
	}
	return spec, nil
}

// loadAll reads every definition. A file that does not parse, or whose name
// does not match its content, is reported in problems and left on disk.
func (s *store) loadAll() (specs []*domain.Spec, problems []error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, []error{fmt.Errorf("read %s: %w", s.dir, err)}
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		path := filepath.Join(s.dir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			problems = append(problems, fmt.Errorf("definition %s: %w", path, err))
			continue
		}
		spec, err := domain.ParseSpec(data)
		if err != nil {
			problems = append(problems, fmt.Errorf("definition %s: %w", path, err))
			continue
		}
		if spec.Name != name {
			problems = append(problems, fmt.Errorf("definition %s: names domain %q, not %q", path, spec.Name, name))
			continue
		}
		specs = append(specs, spec)
	}
	return specs, problems
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	cleanup := func(err error) error {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return cleanup(err)
	}
	if err := tmp.Chmod(0o600); err != nil {
		return cleanup(err)
	}
	if err := tmp.Sync(); err != nil {
		return cleanup(err)
	}
	if err := tmp.Close(); err != nil {
		return cleanup(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
