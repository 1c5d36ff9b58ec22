package testkit

import (
	"bytes"
	"encoding"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// CheckWire fails t unless msg, a pointer to a message that may cross a
// process boundary, is plain data that survives encoding/json:
//
//   - no field that JSON writes (exported, not `json:"-"`) holds a func, a
//     channel, an unsafe pointer or an interface (which JSON cannot decode
//     back into its concrete type), at any depth;
//   - the sample is complete: every such field of the message itself (and
//     of the structs it embeds) is set, so that a field added later and
//     left out of the sample fails;
//   - decoding its JSON (unknown fields refused) gives a value deeply equal
//     to msg. Use times without a monotonic reading (time.Date) in samples.
func CheckWire(t testing.TB, msg any) {
	t.Helper()
	v := reflect.ValueOf(msg)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		t.Fatalf("%T: want a pointer to a struct", msg)
	}
	typ := v.Elem().Type()
	for _, p := range wireProblems(typ, typ.String(), map[reflect.Type]bool{}) {
		t.Errorf("%s", p)
	}
	for _, f := range unsetFields(v.Elem(), typ.Name()) {
		t.Errorf("%s: sample leaves field %s unset", typ, f)
	}
	b, err := json.Marshal(msg)
	if err != nil {
		t.Fatalf("%s: marshal: %v", typ, err)
	}
	back := reflect.New(typ)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(back.Interface()); err != nil {
		t.Fatalf("%s: unmarshal %s: %v", typ, b, err)
	}
	if !reflect.DeepEqual(back.Interface(), msg) {
		again, _ := json.Marshal(back.Interface())
		t.Errorf("%s: does not survive JSON:\n sent %s\n  got %s\n (%#v)", typ, b, again, back.Elem().Interface())
	}
}

var (
	jsonMarshaler = reflect.TypeFor[json.Marshaler]()
	textMarshaler = reflect.TypeFor[encoding.TextMarshaler]()
)

// encodesItself reports whether t (or *t) has its own JSON or text form.
func encodesItself(t reflect.Type) bool {
	for _, c := range []reflect.Type{t, reflect.PointerTo(t)} {
		if c.Implements(jsonMarshaler) || c.Implements(textMarshaler) {
			return true
		}
	}
	return false
}

// jsonField reports whether JSON writes struct field f.
func jsonField(f reflect.StructField) bool {
	if f.Tag.Get("json") == "-" {
		return false
	}
	return f.IsExported() || f.Anonymous && f.Type.Kind() == reflect.Struct
}

func wireProblems(t reflect.Type, path string, seen map[reflect.Type]bool) []string {
	if seen[t] {
		return nil
	}
	seen[t] = true
	if encodesItself(t) {
		return nil
	}
	switch t.Kind() {
	case reflect.Func, reflect.Chan, reflect.UnsafePointer:
		return []string{path + ": a " + t.Kind().String() + " cannot cross a process boundary"}
	case reflect.Interface:
		return []string{path + ": an interface (" + t.String() + ") cannot be decoded back into its concrete type"}
	case reflect.Pointer, reflect.Slice, reflect.Array:
		return wireProblems(t.Elem(), path, seen)
	case reflect.Map:
		return append(wireProblems(t.Key(), path+"[key]", seen), wireProblems(t.Elem(), path+"[value]", seen)...)
	case reflect.Struct:
		var out []string
		for i := range t.NumField() {
			f := t.Field(i)
			if jsonField(f) {
				out = append(out, wireProblems(f.Type, path+"."+f.Name, seen)...)
			}
		}
		return out
	}
	return nil
}

// unsetFields lists the JSON fields of struct v (and of the structs it
// embeds) that hold their zero value.
func unsetFields(v reflect.Value, path string) []string {
	var out []string
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !jsonField(f) {
			continue
		}
		if f.Anonymous && f.Type.Kind() == reflect.Struct && !encodesItself(f.Type) {
			out = append(out, unsetFields(v.Field(i), path+"."+f.Name)...)
			continue
		}
		if v.Field(i).IsZero() {
			out = append(out, path+"."+f.Name)
		}
	}
	return out
}

// ExportedTypes lists the exported type names declared in the non-test Go
// files of the package in dir, sorted: a wire test checks it covers them.
func ExportedTypes(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	fset := token.NewFileSet()
	var names []string
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatalf("parse %s: %v", e.Name(), err)
		}
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.TYPE {
				continue
			}
			for _, s := range g.Specs {
				if ts := s.(*ast.TypeSpec); ts.Name.IsExported() {
					names = append(names, ts.Name.Name)
				}
			}
		}
	}
	sort.Strings(names)
	return names
}

// CheckWireAll checks every message with CheckWire, as a subtest named
// after its type, and fails unless they cover exactly the exported types
// of the package in dir.
func CheckWireAll(t *testing.T, dir string, msgs ...any) {
	t.Helper()
	covered := map[string]bool{}
	for _, m := range msgs {
		name := reflect.TypeOf(m).Elem().Name()
		covered[name] = true
		t.Run(name, func(t *testing.T) { CheckWire(t, m) })
	}
	for _, name := range ExportedTypes(t, dir) {
		if !covered[name] {
			t.Errorf("message %s has no wire sample", name)
		}
	}
}
