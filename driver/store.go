package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

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
	data, err := readFileNoFollow(s.path(name))
	if err != nil {
		return nil, err
	}
	spec, err := domain.ParseSpec(data)
	if err != nil {
		return nil, fmt.Errorf("definition %s: %w", s.path(name), err)
	}
	return spec, nil
}

// brokenDef is a definition file that cannot be used: List shows it as
// broken, define --force replaces it, undefine removes it.
type brokenDef struct {
	name    string
	problem string
}

// loadAll reads every definition. A file that does not parse, or whose name
// does not match its content, is reported in broken (when its file name is
// a domain name) or problems, and left on disk.
func (s *store) loadAll() (specs []*domain.Spec, broken []brokenDef, problems []error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, nil, []error{fmt.Errorf("read %s: %w", s.dir, err)}
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		path := filepath.Join(s.dir, e.Name())
		bad := func(err error) {
			problems = append(problems, err)
			if domain.ValidateName(name) == nil {
				broken = append(broken, brokenDef{name: name, problem: err.Error()})
			}
		}
		data, err := readFileNoFollow(path)
		if err != nil {
			bad(fmt.Errorf("definition %s: %w", path, err))
			continue
		}
		spec, err := domain.ParseSpec(data)
		if err != nil {
			bad(fmt.Errorf("definition %s: %w", path, err))
			continue
		}
		if spec.Name != name {
			bad(fmt.Errorf("definition %s: names domain %q, not %q", path, spec.Name, name))
			continue
		}
		specs = append(specs, spec)
	}
	return specs, broken, problems
}

// tempInfix marks writeFileAtomic's temp files: ".NAME.json.tmp-RANDOM".
const tempInfix = ".json.tmp-"

// isTempName reports whether a file name is one of writeFileAtomic's temp
// files.
func isTempName(name string) bool {
	base, rnd, ok := strings.Cut(name, tempInfix)
	return ok && strings.HasPrefix(base, ".") && len(base) > 1 && rnd != "" && !strings.ContainsAny(rnd, "./")
}

// removeStaleTemps removes the temp files of atomic writes that a crash
// (SIGKILL between create and rename) left in the definitions and status
// dirs, and returns their paths. It runs at Open, before anything writes.
// Only regular files are removed.
func (s *store) removeStaleTemps() (removed []string, problems []error) {
	for _, dir := range []string{s.dir, filepath.Join(filepath.Dir(s.dir), "status")} {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			problems = append(problems, fmt.Errorf("read %s: %w", dir, err))
			continue
		}
		for _, e := range entries {
			if !e.Type().IsRegular() || !isTempName(e.Name()) {
				continue
			}
			path := filepath.Join(dir, e.Name())
			if err := os.Remove(path); err != nil {
				problems = append(problems, fmt.Errorf("remove stale temp file %s: %w", path, err))
				continue
			}
			removed = append(removed, path)
		}
	}
	return removed, problems
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	// CreateTemp opens with O_EXCL: it never follows a planted symlink.
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

// readFileNoFollow reads a regular file without following a symlink at
// its last component, so a link planted in the state dir is refused.
func readFileNoFollow(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s is a symlink; refusing to follow it", path)
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	return io.ReadAll(io.LimitReader(f, maxStateFile+1))
}

// maxStateFile bounds a definition or status file read from disk.
const maxStateFile = 16 << 20

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
