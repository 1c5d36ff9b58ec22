package domain

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// Size is an amount of memory in bytes.
//
// In a spec it is written either as a plain number of bytes (1073741824, or
// "1073741824" as a string) or as a whole number followed by a binary unit:
// K, M, G, T, optionally followed by "iB" (KiB, MiB, GiB, TiB) and matched
// case-insensitively; "B" alone means bytes. All units are powers of 1024, as
// in QEMU's "-m 512M". "KB", "MB", "GB" and "TB" are rejected, because they
// mean powers of 1000 in some tools and powers of 1024 in others. Fractions
// ("1.5G"), signs, exponents and empty values are rejected: write "1536M".
// One space is allowed between the number and the unit ("512 MiB").
type Size uint64

// Binary size units.
const (
	KiB Size = 1 << 10
	MiB Size = 1 << 20
	GiB Size = 1 << 30
	TiB Size = 1 << 40
)

// sizeUnits maps a lower-case unit suffix to its multiplier.
var sizeUnits = map[string]Size{
	"": 1, "b": 1,
	"k": KiB, "kib": KiB,
	"m": MiB, "mib": MiB,
	"g": GiB, "gib": GiB,
	"t": TiB, "tib": TiB,
}

// sizeError is the error ParseSize returns; ParseSpec turns it into a
// *FieldError naming the field.
type sizeError struct {
	input   string
	problem string
}

func (e *sizeError) Error() string {
	return fmt.Sprintf("invalid size %s: %s", shortQuote(e.input), e.problem)
}

// ParseSize parses a size written as described on Size, such as "128M",
// "1GiB" or "1048576". A zero size is rejected: no field that takes a Size
// means anything by it.
func ParseSize(s string) (Size, error) {
	bad := func(problem string) (Size, error) {
		return 0, &sizeError{input: s, problem: problem}
	}
	if s == "" {
		return bad("empty")
	}
	if len(s) > 64 {
		return bad("too long")
	}
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	num, rest := s[:i], s[i:]
	if num == "" {
		return bad(`must start with a whole number, as in "512M" or "1G"`)
	}
	if strings.HasPrefix(rest, ".") || strings.HasPrefix(rest, ",") {
		return bad(`fractions are not supported; use a smaller unit, as in "1536M" instead of "1.5G"`)
	}
	rest = strings.TrimPrefix(rest, " ")
	unit, ok := sizeUnits[strings.ToLower(rest)]
	if !ok {
		switch strings.ToLower(rest) {
		case "kb", "mb", "gb", "tb":
			return bad(fmt.Sprintf("unit %q is ambiguous; use %q or %q (powers of 1024)", rest, rest[:1], rest[:1]+"iB"))
		}
		return bad(`unknown unit; use K, M, G or T (or KiB, MiB, GiB, TiB)`)
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return bad("number too large")
	}
	hi, v := bits.Mul64(n, uint64(unit))
	if hi != 0 {
		return bad("number too large")
	}
	if v == 0 {
		return bad("must be greater than zero")
	}
	return Size(v), nil
}

// Bytes returns the size in bytes.
func (s Size) Bytes() uint64 { return uint64(s) }

// MiBCeil returns the size in MiB, rounded up.
func (s Size) MiBCeil() uint64 {
	return (uint64(s) + uint64(MiB) - 1) / uint64(MiB)
}

// String formats the size with the largest unit that divides it exactly
// ("128M", "1G", "4K"), or as plain bytes ("1000"). ParseSize reads it back.
func (s Size) String() string {
	if s != 0 {
		for _, u := range []struct {
			suffix string
			mult   Size
		}{{"T", TiB}, {"G", GiB}, {"M", MiB}, {"K", KiB}} {
			if s%u.mult == 0 {
				return strconv.FormatUint(uint64(s/u.mult), 10) + u.suffix
			}
		}
	}
	return strconv.FormatUint(uint64(s), 10)
}

// MarshalJSON writes the size as a string with a unit ("128M") when it is a
// whole number of KiB, and as a JSON number of bytes otherwise.
func (s Size) MarshalJSON() ([]byte, error) {
	str := s.String()
	if s != 0 && s%KiB == 0 {
		return json.Marshal(str)
	}
	return []byte(str), nil
}

// UnmarshalJSON reads a size from a JSON string (see ParseSize) or from a
// JSON number that is a non-negative whole number of bytes. JSON null leaves
// the size unchanged.
func (s *Size) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, []byte("null")) {
		return nil
	}
	var str string
	if len(data) > 0 && data[0] == '"' {
		if err := json.Unmarshal(data, &str); err != nil {
			return err
		}
	} else {
		str = string(data)
		if len(str) > 0 && (str[0] == '-' || strings.ContainsAny(str, ".eE")) {
			return &sizeError{input: str, problem: "a number of bytes must be a whole, non-negative number"}
		}
		if str == "" || strings.Trim(str, "0123456789") != "" {
			return &sizeError{input: str, problem: `must be a number of bytes or a string such as "512M"`}
		}
	}
	v, err := ParseSize(str)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// asSizeError reports whether err comes from parsing a size, and returns
// its problem text.
func asSizeError(err error) (string, bool) {
	var se *sizeError
	if errors.As(err, &se) {
		return se.Error(), true
	}
	return "", false
}
