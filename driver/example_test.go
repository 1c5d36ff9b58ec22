package driver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/digitalocean/go-qemu/qemu"
	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
)

// Example defines a VM, runs it on a real QEMU, sends raw QMP and destroys it.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "vmsup-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	d, err := driver.Open(ctx, driver.Config{StateDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close(ctx)

	spec, err := domain.ParseSpec([]byte(`
name: example
machine: none   # no guest CPU: QEMU with only a monitor
accel: tcg
memory: 64M
`))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := d.Define(ctx, spec); err != nil {
		log.Fatal(err)
	}
	vm := d.Domain("example")
	if err := vm.Start(ctx, driver.StartOptions{}); err != nil {
		log.Fatal(err)
	}
	info, _ := vm.Info(ctx)
	fmt.Println(info.State, info.Reason)

	status, err := vm.QMP(ctx, json.RawMessage(`{"execute":"query-status"}`))
	if err != nil {
		log.Fatal(err)
	}
	var st struct{ Status string }
	_ = json.Unmarshal(status, &st)
	fmt.Println("QEMU says", st.Status)

	if err := vm.Destroy(ctx); err != nil {
		log.Fatal(err)
	}
	info, _ = vm.Info(ctx)
	fmt.Println(info.State, info.Reason)
	// Output:
	// running booted
	// QEMU says running
	// shutoff destroyed
}

// ExampleDriver_Subscribe prints lifecycle events as a VM starts and is
// paused.
func ExampleDriver_Subscribe() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "vmsup-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	d, err := driver.Open(ctx, driver.Config{StateDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close(ctx)

	events := d.Subscribe(ctx, 16)
	defer events.Close()
	if _, err := d.Define(ctx, &domain.Spec{Name: "watched", Machine: "none", Accel: "tcg"}); err != nil {
		log.Fatal(err)
	}
	vm := d.Domain("watched")
	if err := vm.Start(ctx, driver.StartOptions{}); err != nil {
		log.Fatal(err)
	}
	if err := vm.Pause(ctx); err != nil {
		log.Fatal(err)
	}
	if err := vm.Destroy(ctx); err != nil {
		log.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		ev := <-events.Events()
		fmt.Println(ev.Type, ev.Domain, ev.State, ev.Reason)
	}
	// Output:
	// defined watched shutoff unknown
	// started watched running booted
	// paused watched paused user
	// stopped watched shutoff destroyed
}

// ExampleDomain_Monitor drives a supervised domain with go-qemu's typed
// commands and its qemu.Domain. Each command is a QMP job on the domain.
func ExampleDomain_Monitor() {
	ctx := context.Background()
	d, err := driver.Open(ctx, driver.Config{StateDir: "/var/lib/myapp/vms"})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close(ctx)

	mon := d.Domain("web1").Monitor()
	if err := mon.Connect(); err != nil {
		log.Fatal(err) // domain "web1" not found
	}
	defer mon.Disconnect()
	st, err := raw.NewMonitor(mon).QueryStatus()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("status:", st.Status)

	dom, err := qemu.NewDomain(mon, "web1")
	if err != nil {
		log.Fatal(err)
	}
	defer dom.Close() // disconnects: the event streams end
	events, done, err := dom.Events()
	if err != nil {
		log.Fatal(err)
	}
	defer close(done)
	for ev := range events {
		fmt.Println("QMP event:", ev.Event)
	}
}
