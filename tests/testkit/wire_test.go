package testkit

import (
	"reflect"
	"testing"
	"time"
)

type wireOK struct {
	Name  string
	At    time.Time
	Inner struct{ N int }
	skip  func()
	Hide  chan int `json:"-"`
}

type wireFunc struct {
	Name string
	Do   func()
}

type wireAny struct {
	Msg any
}

type wireNested struct {
	Inner []struct{ C chan int }
}

// TestWireProblems: the type walk finds funcs, channels and interfaces at
// any depth, and only in fields JSON writes; the sample check finds unset
// fields.
func TestWireProblems(t *testing.T) {
	if p := wireProblems(reflect.TypeFor[wireOK](), "wireOK", map[reflect.Type]bool{}); len(p) != 0 {
		t.Errorf("wireOK: %v", p)
	}
	for _, c := range []struct {
		typ  reflect.Type
		want string
	}{
		{reflect.TypeFor[wireFunc](), "wireFunc.Do: a func cannot cross a process boundary"},
		{reflect.TypeFor[wireAny](), "wireAny.Msg: an interface (interface {}) cannot be decoded back into its concrete type"},
		{reflect.TypeFor[wireNested](), "wireNested.Inner.C: a chan cannot cross a process boundary"},
	} {
		p := wireProblems(c.typ, c.typ.Name(), map[reflect.Type]bool{})
		if len(p) != 1 || p[0] != c.want {
			t.Errorf("%s: %q, want %q", c.typ, p, c.want)
		}
	}
	unset := unsetFields(reflect.ValueOf(&wireOK{Name: "x"}).Elem(), "wireOK")
	if len(unset) != 2 || unset[0] != "wireOK.At" || unset[1] != "wireOK.Inner" {
		t.Errorf("unset fields %q", unset)
	}
}
