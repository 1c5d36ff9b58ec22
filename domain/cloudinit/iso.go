package cloudinit

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

// VolumeLabel is the label by which cloud-init's NoCloud source finds
// its seed.
const VolumeLabel = "cidata"

// maxISO bounds the size of a seed image ReadISO reads.
const maxISO = 8 << 20

const isoBlockSize = 2048

// WriteISO writes s as a seed image at path (absolute) and reports whether
// it changed anything: when path already holds a seed image with the same
// files, it is left as it is and WriteISO returns false. Otherwise the
// image is built in a temporary file next to path, synced and renamed over
// path, so a reader sees the old image or the new one, never a part; the
// temporary file is removed on failure. The image is readable by its owner
// only, since user data may hold secrets.
func WriteISO(path string, s *Seed) (changed bool, err error) {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return false, fmt.Errorf("cloud-init seed %q: the path must be absolute and clean", path)
	}
	if old, err := ReadISO(path); err == nil && old.Equal(s) {
		return false, nil
	}
	if err := build(path, s); err != nil {
		return false, fmt.Errorf("writing cloud-init seed %s: %w", path, err)
	}
	return true, nil
}

func build(path string, s *Seed) (err error) {
	dir := filepath.Dir(path)
	ws, err := os.MkdirTemp(dir, "."+filepath.Base(path)+".ws-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(ws)
	// The root directory of the image takes the workspace's mode.
	if err := os.Chmod(ws, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	iso, err := iso9660.Create(file.New(f, false), 0, 0, isoBlockSize, ws)
	if err != nil {
		return fmt.Errorf("starting the ISO image: %w", err)
	}
	for _, sf := range s.files() {
		w, err := iso.OpenFile(sf.name, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
		if err != nil {
			return fmt.Errorf("adding %s: %w", sf.name, err)
		}
		_, werr := w.Write(sf.data)
		cerr := w.Close()
		if err := errors.Join(werr, cerr); err != nil {
			return fmt.Errorf("adding %s: %w", sf.name, err)
		}
	}
	if err := iso.Finalize(iso9660.FinalizeOptions{RockRidge: true, Joliet: true, VolumeIdentifier: VolumeLabel}); err != nil {
		return fmt.Errorf("finishing the ISO image: %w", err)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil // renamed; only the directory sync is lost
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// ReadISO reads the seed image at path back: it must be an ISO 9660 image
// of at most 8 MiB labelled "cidata" that holds meta-data and user-data,
// and may hold network-config, each within this package's limits.
func ReadISO(path string) (*Seed, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("cloud-init seed %s is not a regular file", path)
	}
	if st.Size() > maxISO {
		return nil, fmt.Errorf("cloud-init seed %s is %d bytes, more than a seed's %d", path, st.Size(), maxISO)
	}
	iso, err := iso9660.Read(file.New(f, true), st.Size(), 0, isoBlockSize)
	if err != nil {
		return nil, fmt.Errorf("cloud-init seed %s: %w", path, err)
	}
	if l := strings.TrimRight(iso.Label(), " \x00"); l != VolumeLabel {
		return nil, fmt.Errorf("cloud-init seed %s is labelled %q, not %q", path, l, VolumeLabel)
	}
	read := func(name string, limit int64) ([]byte, error) {
		r, err := iso.Open(name)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		b, err := io.ReadAll(io.LimitReader(r, limit+1))
		if err != nil {
			return nil, fmt.Errorf("cloud-init seed %s: reading %s: %w", path, name, err)
		}
		if int64(len(b)) > limit {
			return nil, fmt.Errorf("cloud-init seed %s: %s is larger than %d bytes", path, name, limit)
		}
		return b, nil
	}
	s := &Seed{}
	if s.MetaData, err = read(MetaDataName, 2<<20); err != nil {
		return nil, err
	}
	if s.UserData, err = read(UserDataName, MaxUserData); err != nil {
		return nil, err
	}
	if s.NetworkConfig, err = read(NetworkConfigName, MaxNetworkConfig); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		s.NetworkConfig = nil
	}
	return s, nil
}
