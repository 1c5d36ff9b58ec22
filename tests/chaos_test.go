package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/vm"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/supervision"
	"github.com/vmsup/vmsup/tests/testkit"
)

// Flags of TestChaos. CI runs the defaults (about 30 s of faults); run it
// longer with, for example:
//
//	go test -race -count=1 -run TestChaos ./tests/ -chaos.duration=5m
var (
	chaosDuration = flag.Duration("chaos.duration", 30*time.Second, "TestChaos: how long clients and faults run")
	chaosVMs      = flag.Int("chaos.vms", 4, "TestChaos: number of -machine none VMs (plus one tiny guest when .cache/guest/vmlinuz exists)")
	chaosClients  = flag.Int("chaos.clients", 6, "TestChaos: number of concurrent API clients")
	chaosSeed     = flag.Int64("chaos.seed", 0, "TestChaos: random seed (0 picks one from the clock; the test logs it)")
	chaosMaxStop  = flag.Duration("chaos.maxstop", 3*time.Second, "TestChaos: longest SIGSTOP of a QEMU (at least 500ms)")
	chaosGuest    = flag.Bool("chaos.guest", true, "TestChaos: add a tiny-guest VM when .cache/guest/vmlinuz exists")
	chaosFaults   = flag.String("chaos.faults", "all", "TestChaos: comma-separated faults to inject: kill, stop, panic-driver, panic-domain, panic-monitor, restart (driver close and reopen), or all")
)

var chaosFaultKinds = []string{"kill", "stop", "panic-driver", "panic-domain", "panic-monitor", "restart"}

// parseChaosFaults returns the set of enabled fault kinds.
func parseChaosFaults(s string) (map[string]bool, error) {
	on := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch {
		case f == "all":
			for _, k := range chaosFaultKinds {
				on[k] = true
			}
		case f == "panic":
			on["panic-driver"], on["panic-domain"], on["panic-monitor"] = true, true, true
		case f == "" || f == "none":
		default:
			known := false
			for _, k := range chaosFaultKinds {
				known = known || k == f
			}
			if !known {
				return nil, fmt.Errorf("-chaos.faults: unknown fault %q (want %s, panic or all)", f, strings.Join(chaosFaultKinds, ", "))
			}
			on[f] = true
		}
	}
	return on, nil
}

const (
	// chaosCallDeadline is the context deadline of every client call.
	chaosCallDeadline = 15 * time.Second
	// chaosCallMargin is how late after its deadline a call may return
	// (the API spends up to 250 ms naming the job holder).
	chaosCallMargin = time.Second
	// chaosSettle bounds the wait for every domain to become idle and
	// stable at the end.
	chaosSettle = 60 * time.Second
	// chaosPanicsPerMinute caps injected panics per actor: protoactor's
	// strategies stop an actor after 10 restarts in a window, which is
	// the documented way to end a restart storm, not a fault to test here.
	chaosPanicsPerMinute = 4
	// chaosRestartEvery is the least time between two driver restarts.
	chaosRestartEvery = 3 * time.Second
	// chaosGoroutineSlack is how many more goroutines than at the
	// baseline may remain after the last driver closed. protoactor keeps
	// no goroutine per actor system once it is shut down (its dispatcher
	// runs mailboxes on demand and its dead-letter throttle timer
	// goroutine ends after one interval), so the slack only covers
	// runtime and testing goroutines that come and go.
	chaosGoroutineSlack = 2
)

// chaosVM is one VM of the test and what it must look like at the end.
type chaosVM struct {
	name    string
	uuid    string
	spec    *domain.Spec
	onCrash string
	guest   bool
	// file is the definition as written by the first define; every later
	// read must find the same bytes (redefines write the same spec).
	file []byte
}

// chaosJob is a job that holds a domain, as the job hooks saw it.
type chaosJob struct {
	gen     int
	id      uint64
	name    string
	owner   string
	request string
	started time.Time
}

func (j chaosJob) String() string {
	return fmt.Sprintf("gen %d job %d %q (%s, req %s) since %s", j.gen, j.id, j.name, j.owner, j.request, j.started.Format("15:04:05.000000"))
}

// jobSlot holds the jobs active on one domain, across driver generations.
type jobSlot struct {
	mu     sync.Mutex
	active []chaosJob
}

// chaosStats counts what happened.
type chaosStats struct {
	mu       sync.Mutex
	ops      map[string]map[string]int // op -> outcome -> count
	maxLat   map[string]time.Duration  // op -> slowest call
	examples map[string][]string       // outcome -> a few error messages
	faults   map[string]int
	events   map[domain.EventType]int
	restarts map[string]int // "gen/name" -> highest Info.Restarts seen
	loops    map[string]bool
	states   map[string]int // "state/reason" seen in List polls
}

// chaos is the harness: the current driver behind a RWMutex, the VMs, the
// invariant bookkeeping and the statistics.
type chaos struct {
	t       *testing.T
	dir     string
	cfg     driver.Config
	logPath string
	logFile *os.File
	vms     []*chaosVM
	byUUID  map[string]*chaosVM
	slots   map[string]*jobSlot

	mu      sync.RWMutex
	drv     *driver.Driver
	gen     int
	subStop context.CancelFunc

	vmu        sync.Mutex
	violations map[string][]string
	vcount     map[string]int

	stoppedMu sync.Mutex
	stopped   map[int]*stoppedQEMU

	seenTwo   sync.Map // "pid,pid" already reported
	jobsRun   atomic.Int64
	stats     chaosStats
	panicLog  map[string][]time.Time
	lastSwap  time.Time
	eventsWG  sync.WaitGroup
	stopWG    sync.WaitGroup
	stopAllCh chan struct{}
	faults    map[string]bool

	checkerDone chan struct{}
	checkerOnce sync.Once
}

func (c *chaos) stopChecker() { c.checkerOnce.Do(func() { close(c.checkerDone) }) }

type stoppedQEMU struct {
	pid   int
	pidfd int
}

var errChaosDriverClosed = errors.New("chaos: driver closed (restart in progress)")

// TestChaos runs real VMs under concurrent random clients while QEMUs are
// killed and stopped, actors panic and the driver restarts, and checks the
// job and process invariants during the run and the agreement of states
// with reality, the definitions and the absence of leaks at the end.
func TestChaos(t *testing.T) {
	testkit.RequireQEMU(t)
	seed := *chaosSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	maxStop := max(*chaosMaxStop, 500*time.Millisecond)
	faults, err := parseChaosFaults(*chaosFaults)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("chaos: seed %d, duration %s, %d machine-none VMs, %d clients, faults %s, SIGSTOP 0.5s..%s (-chaos.seed=%d replays the same random choices; timing still differs)",
		seed, *chaosDuration, *chaosVMs, *chaosClients, *chaosFaults, maxStop, seed)

	c := newChaos(t)
	c.faults = faults
	// Baselines before the first driver exists.
	baseGoroutines := runtime.NumGoroutine()
	baseStacks := goroutineStacks()
	baseSockets := countSocketFDs()
	if err := c.open(); err != nil {
		t.Fatalf("open driver: %v", err)
	}

	c.defineAll()
	c.startAll()

	runCtx, stopRun := context.WithTimeout(context.Background(), *chaosDuration)
	defer stopRun()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); c.checker(c.checkerDone) }()
	var clients sync.WaitGroup
	for i := 0; i < *chaosClients; i++ {
		clients.Add(1)
		go func(i int) { defer clients.Done(); c.client(runCtx, rand.New(rand.NewSource(seed+int64(i)+1))) }(i)
	}
	clients.Add(1)
	go func() { defer clients.Done(); c.injector(runCtx, rand.New(rand.NewSource(seed)), maxStop) }()

	began := time.Now()
	<-runCtx.Done()
	if !waitGroupWithin(&clients, chaosCallDeadline+5*time.Second) {
		c.violate("call-deadline", "clients or the fault injector did not end within %s after the run ended", chaosCallDeadline+5*time.Second)
		c.summary()
		c.dumpOnFailure()
		t.FailNow()
	}
	t.Logf("chaos: run ended after %s", time.Since(began).Round(time.Millisecond))

	// End of faults: resume every stopped QEMU and let everything settle.
	c.contAll()
	infos := c.settle()
	c.checkFinalStates(infos)
	c.checkDefinitions()

	// Destroy everything, close the driver, and look for leaks.
	c.destroyAll()
	c.stopChecker()
	wg.Wait()
	c.closeDriver()
	c.eventsWG.Wait()
	c.checkNoQEMU()
	c.checkNoJobs()
	c.checkSockets(baseSockets)
	c.checkGoroutines(baseGoroutines, baseStacks)

	c.summary()
	c.report()
}

func newChaos(t *testing.T) *chaos {
	dir := testkit.ShortDir(t)
	logFile, err := os.CreateTemp("", "vmsup-chaos-*.log")
	if err != nil {
		t.Fatal(err)
	}
	// vmsup logs go to a file: goroutines of a closed driver may still
	// log after the test ended, which a testing writer forbids.
	logger := zerolog.New(logFile).Level(zerolog.DebugLevel).Hook(zerolog.HookFunc(func(e *zerolog.Event, _ zerolog.Level, _ string) {
		e.Str("at", time.Now().Format("15:04:05.000000"))
	}))
	c := &chaos{
		t:           t,
		dir:         dir,
		logPath:     logFile.Name(),
		logFile:     logFile,
		byUUID:      map[string]*chaosVM{},
		slots:       map[string]*jobSlot{},
		violations:  map[string][]string{},
		vcount:      map[string]int{},
		stopped:     map[int]*stoppedQEMU{},
		panicLog:    map[string][]time.Time{},
		stopAllCh:   make(chan struct{}),
		checkerDone: make(chan struct{}),
		cfg: driver.Config{
			StateDir:     filepath.Join(dir, "state"),
			RunDir:       filepath.Join(dir, "run"),
			Logger:       &logger,
			DestroyGrace: 2 * time.Second,
			MonitorReconnect: supervision.Backoff{
				Initial: 100 * time.Millisecond, Max: time.Second,
			},
			// As root, QEMU runs as the unprivileged user in its own
			// cgroup, as the daemon runs it.
			Confine: confinement(t, dir),
		},
		stats: chaosStats{
			ops:      map[string]map[string]int{},
			maxLat:   map[string]time.Duration{},
			examples: map[string][]string{},
			faults:   map[string]int{},
			events:   map[domain.EventType]int{},
			restarts: map[string]int{},
			loops:    map[string]bool{},
			states:   map[string]int{},
		},
	}
	t.Cleanup(c.cleanup)
	return c
}

// --- the driver behind a RWMutex ---------------------------------------

// open opens a new driver generation on the same dirs, with job hooks that
// know the generation, and subscribes to its events.
func (c *chaos) open() error {
	c.mu.Lock()
	gen := c.gen + 1
	c.mu.Unlock()
	cfg := c.cfg
	cfg.JobHooks = c.hooks(gen)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	d, err := driver.Open(ctx, cfg)
	if took := time.Since(start); took > chaosCallDeadline {
		c.violate("call-deadline", "driver.Open took %s", took)
	}
	if err != nil {
		return err
	}
	subCtx, subStop := context.WithCancel(context.Background())
	sub := d.Subscribe(subCtx, 4096)
	c.eventsWG.Add(1)
	go func() {
		defer c.eventsWG.Done()
		for ev := range sub.Events() {
			c.stats.mu.Lock()
			c.stats.events[ev.Type]++
			c.stats.mu.Unlock()
		}
	}()
	c.mu.Lock()
	c.drv, c.gen, c.subStop = d, gen, subStop
	c.mu.Unlock()
	return nil
}

// current returns the driver in use, or errChaosDriverClosed during a swap.
func (c *chaos) current() (*driver.Driver, int, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.drv == nil {
		return nil, c.gen, errChaosDriverClosed
	}
	return c.drv, c.gen, nil
}

// detach takes the driver out of use; calls started before keep using it.
func (c *chaos) detach() (*driver.Driver, context.CancelFunc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, stop := c.drv, c.subStop
	c.drv, c.subStop = nil, nil
	return d, stop
}

// restartDriver closes the driver as a daemon stop would (QEMUs keep
// running) and opens a new one on the same dirs, which adopts them.
func (c *chaos) restartDriver() {
	old, subStop := c.detach()
	if old == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	start := time.Now()
	err := old.Close(ctx)
	cancel()
	if subStop != nil {
		subStop()
	}
	took := time.Since(start)
	if took > chaosCallDeadline {
		c.violate("call-deadline", "driver.Close took %s", took)
	}
	c.stats.mu.Lock()
	c.stats.maxLat["driver.Close (restart)"] = max(c.stats.maxLat["driver.Close (restart)"], took)
	c.stats.mu.Unlock()
	if err != nil {
		c.violate("driver-restart", "close: %v", err)
	}
	for attempt := 1; ; attempt++ {
		err := c.open()
		if err == nil {
			return
		}
		c.violate("driver-restart", "reopen (attempt %d): %v", attempt, err)
		if attempt == 5 {
			c.t.Errorf("chaos: cannot reopen the driver: %v", err)
			return
		}
		time.Sleep(time.Second)
	}
}

// closeDriver closes the driver for good.
func (c *chaos) closeDriver() {
	d, subStop := c.detach()
	if d == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := d.Close(ctx); err != nil {
		c.violate("driver-close", "close: %v", err)
	}
	if took := time.Since(start); took > chaosCallDeadline {
		c.violate("call-deadline", "final driver.Close took %s", took)
	}
	if subStop != nil {
		subStop()
	}
}

// --- invariant: one job at a time per domain -----------------------------

func (c *chaos) hooks(gen int) vm.JobHooks {
	return vm.JobHooks{
		Started: func(name string, j domain.JobInfo) {
			s := c.slots[name]
			if s == nil {
				c.violate("hooks", "job %d %q started on unknown domain %q", j.ID, j.Name, name)
				return
			}
			cj := chaosJob{gen: gen, id: j.ID, name: j.Name, owner: j.Owner, request: j.RequestID, started: time.Now()}
			s.mu.Lock()
			s.active = append(s.active, cj)
			if len(s.active) > 1 {
				var others []string
				for _, o := range s.active[:len(s.active)-1] {
					others = append(others, o.String())
				}
				c.violate("two-jobs", "domain %s: %s started while active: %s%s", name, cj, strings.Join(others, "; "), c.recentFaults())
			}
			s.mu.Unlock()
			c.jobsRun.Add(1)
			// Hold the job a little, so that an overlap is seen.
			time.Sleep(200 * time.Microsecond)
		},
		Released: func(name string, j domain.JobInfo) {
			s := c.slots[name]
			if s == nil {
				return
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			for i, a := range s.active {
				if a.gen == gen && a.id == j.ID && a.request == j.RequestID {
					s.active = append(s.active[:i], s.active[i+1:]...)
					return
				}
			}
			c.violate("hooks", "domain %s: gen %d job %d %q released but never started", name, gen, j.ID, j.Name)
		},
	}
}

// --- setup -----------------------------------------------------------------

func (c *chaos) defineAll() {
	t := c.t
	d, _, err := c.current()
	if err != nil {
		t.Fatal(err)
	}
	var specs []*domain.Spec
	for i := 0; i < *chaosVMs; i++ {
		spec := &domain.Spec{Name: fmt.Sprintf("chaos%d", i), Machine: "none", Accel: "tcg", Memory: 64 << 20}
		switch i % 4 {
		case 0: // restarts freely
			spec.OnCrash = domain.OnCrashRestart
			spec.Restart = &domain.RestartPolicy{Initial: domain.Duration(50 * time.Millisecond), Max: domain.Duration(400 * time.Millisecond), Limit: 1000, Window: domain.Duration(time.Minute)}
		case 2: // restarts until a tight crash-loop limit
			spec.OnCrash = domain.OnCrashRestart
			spec.Restart = &domain.RestartPolicy{Initial: domain.Duration(100 * time.Millisecond), Max: domain.Duration(300 * time.Millisecond), Factor: 1.5, Limit: 3, Window: domain.Duration(10 * time.Second)}
		default:
			spec.OnCrash = domain.OnCrashDestroy
		}
		specs = append(specs, spec)
	}
	if *chaosGuest {
		if kernel, err := filepath.Abs("../.cache/guest/vmlinuz"); err == nil && fileExists(kernel) {
			initrd, _ := filepath.Abs("../.cache/guest/initrd.img")
			spec := &domain.Spec{Name: "chaosguest", Machine: "q35", Accel: "auto", Memory: 128 << 20,
				Kernel: kernel, Append: "console=ttyS0 quiet", OnCrash: domain.OnCrashRestart,
				Restart: &domain.RestartPolicy{Initial: domain.Duration(100 * time.Millisecond), Max: domain.Duration(500 * time.Millisecond), Limit: 1000, Window: domain.Duration(time.Minute)}}
			if fileExists(initrd) {
				spec.Initrd = initrd
			}
			specs = append(specs, spec)
		} else {
			t.Logf("chaos: no tiny guest (.cache/guest/vmlinuz missing; run tests/guest/build-guest.sh): machine-none VMs only")
		}
	}
	for _, spec := range specs {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		res, err := d.Define(ctx, spec)
		cancel()
		if err != nil {
			t.Fatalf("define %s: %v", spec.Name, err)
		}
		spec.UUID = res.UUID
		file, err := os.ReadFile(filepath.Join(c.cfg.StateDir, "domains", spec.Name+".json"))
		if err != nil {
			t.Fatalf("definition of %s: %v", spec.Name, err)
		}
		vm := &chaosVM{name: spec.Name, uuid: res.UUID, spec: spec.Clone(), onCrash: spec.OnCrash, guest: spec.Kernel != "", file: file}
		c.vms = append(c.vms, vm)
		c.byUUID[vm.uuid] = vm
		c.slots[vm.name] = &jobSlot{}
	}
}

func (c *chaos) startAll() {
	d, _, err := c.current()
	if err != nil {
		c.t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, vm := range c.vms {
		wg.Add(1)
		go func(vm *chaosVM) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := d.Domain(vm.name).Start(ctx, driver.StartOptions{}); err != nil {
				c.t.Errorf("initial start of %s: %v", vm.name, err)
			}
		}(vm)
	}
	wg.Wait()
	if c.t.Failed() {
		c.t.FailNow()
	}
}

// --- clients -----------------------------------------------------------------

type chaosOp struct {
	name   string
	weight int
	run    func(ctx context.Context, c *chaos, d *driver.Driver, vm *chaosVM, r *rand.Rand) error
}

var chaosOps = []chaosOp{
	{"start", 12, func(ctx context.Context, _ *chaos, d *driver.Driver, vm *chaosVM, r *rand.Rand) error {
		return d.Domain(vm.name).Start(ctx, driver.StartOptions{Paused: r.Intn(5) == 0})
	}},
	{"shutdown", 5, func(ctx context.Context, _ *chaos, d *driver.Driver, vm *chaosVM, r *rand.Rand) error {
		return d.Domain(vm.name).Shutdown(ctx, driver.ShutdownOptions{Timeout: time.Duration(300+r.Intn(1700)) * time.Millisecond})
	}},
	{"destroy", 6, func(ctx context.Context, _ *chaos, d *driver.Driver, vm *chaosVM, _ *rand.Rand) error {
		return d.Domain(vm.name).Destroy(ctx)
	}},
	{"pause", 7, func(ctx context.Context, _ *chaos, d *driver.Driver, vm *chaosVM, _ *rand.Rand) error {
		return d.Domain(vm.name).Pause(ctx)
	}},
	{"resume", 7, func(ctx context.Context, _ *chaos, d *driver.Driver, vm *chaosVM, _ *rand.Rand) error {
		return d.Domain(vm.name).Resume(ctx)
	}},
	{"reset", 5, func(ctx context.Context, _ *chaos, d *driver.Driver, vm *chaosVM, _ *rand.Rand) error {
		return d.Domain(vm.name).Reset(ctx)
	}},
	{"qmp query-status", 10, func(ctx context.Context, c *chaos, d *driver.Driver, vm *chaosVM, _ *rand.Rand) error {
		ret, err := d.Domain(vm.name).QMP(ctx, json.RawMessage(`{"execute":"query-status"}`))
		if err == nil {
			var st struct {
				Status *string `json:"status"`
			}
			if json.Unmarshal(ret, &st) != nil || st.Status == nil {
				c.violate("bad-reply", "%s: query-status returned %s", vm.name, ret)
			}
		}
		return err
	}},
	{"qmp stop", 4, func(ctx context.Context, _ *chaos, d *driver.Driver, vm *chaosVM, _ *rand.Rand) error {
		_, err := d.Domain(vm.name).QMP(ctx, json.RawMessage(`{"execute":"stop"}`))
		return err
	}},
	{"qmp cont", 4, func(ctx context.Context, _ *chaos, d *driver.Driver, vm *chaosVM, _ *rand.Rand) error {
		_, err := d.Domain(vm.name).QMP(ctx, json.RawMessage(`{"execute":"cont"}`))
		return err
	}},
	{"info", 12, func(ctx context.Context, c *chaos, d *driver.Driver, vm *chaosVM, _ *rand.Rand) error {
		in, err := d.Domain(vm.name).Info(ctx)
		if err == nil && (in.Name != vm.name || in.UUID != vm.uuid) {
			c.violate("definition", "info of %s names %s uuid %s, want uuid %s", vm.name, in.Name, in.UUID, vm.uuid)
		}
		return err
	}},
	{"list", 8, func(ctx context.Context, c *chaos, d *driver.Driver, _ *chaosVM, _ *rand.Rand) error {
		infos, err := d.List(ctx)
		if err == nil {
			c.checkList(infos, "list")
		}
		return err
	}},
	{"jobs", 6, func(ctx context.Context, c *chaos, d *driver.Driver, vm *chaosVM, _ *rand.Rand) error {
		js, err := d.Domain(vm.name).Jobs(ctx)
		if err == nil && js.Domain != vm.name {
			c.violate("bad-reply", "jobs of %s name domain %q", vm.name, js.Domain)
		}
		return err
	}},
	{"define", 2, func(ctx context.Context, c *chaos, d *driver.Driver, vm *chaosVM, _ *rand.Rand) error {
		res, err := d.Define(ctx, vm.spec.Clone())
		if err == nil && (res.UUID != vm.uuid || res.Created) {
			c.violate("definition", "redefine of %s: %+v, want uuid %s, not created", vm.name, res, vm.uuid)
		}
		return err
	}},
}

func pickOp(r *rand.Rand) chaosOp {
	total := 0
	for _, op := range chaosOps {
		total += op.weight
	}
	n := r.Intn(total)
	for _, op := range chaosOps {
		if n < op.weight {
			return op
		}
		n -= op.weight
	}
	return chaosOps[0]
}

func (c *chaos) client(ctx context.Context, r *rand.Rand) {
	for ctx.Err() == nil {
		op := pickOp(r)
		vm := c.vms[r.Intn(len(c.vms))]
		c.call(op, vm, r)
		time.Sleep(time.Duration(r.Intn(20)) * time.Millisecond)
	}
}

// call runs one operation with its own deadline and records how it ended.
func (c *chaos) call(op chaosOp, vm *chaosVM, r *rand.Rand) {
	d, gen, err := c.current()
	if err != nil {
		c.record(op.name, err, 0, gen, gen)
		time.Sleep(10 * time.Millisecond)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), chaosCallDeadline)
	start := time.Now()
	err = op.run(ctx, c, d, vm, r)
	took := time.Since(start)
	cancel()
	if took > chaosCallDeadline+chaosCallMargin {
		c.violate("call-deadline", "%s %s returned after %s (deadline %s): %v", op.name, vm.name, took.Round(time.Millisecond), chaosCallDeadline, err)
	}
	_, genAfter, _ := c.current()
	c.record(op.name, err, took, gen, genAfter)
}

// outcome classifies a call's result for the summary.
func outcome(err error) string {
	if err == nil {
		return "ok"
	}
	var pe *supervision.PanicError
	var we *domain.JobWaitError
	msg := err.Error()
	switch {
	case errors.Is(err, errChaosDriverClosed):
		return "driver swapping"
	case errors.As(err, &pe), strings.Contains(msg, "restarted after a panic"):
		return "actor panic"
	case errors.As(err, &we):
		return "job wait timeout"
	case strings.Contains(msg, "gave up after") && strings.Contains(msg, "while its job"):
		return "deadline (own job still running)"
	case strings.Contains(msg, "gave up after"):
		// The domain actor could not even say who held the job: it
		// stopped (driver closed or panicked) without answering.
		return "deadline (domain actor gone, never answered)"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, actors.ErrNoActor), errors.Is(err, driver.ErrNotFound):
		return "actor gone"
	case strings.Contains(msg, "supervisor is stopping"):
		return "driver stopping"
	case errors.Is(err, domain.ErrNotRunning):
		return "not running"
	case strings.Contains(msg, "already"), strings.Contains(msg, "not paused"):
		return "refused by state"
	case strings.Contains(msg, "destroyed by job"):
		return "preempted by destroy"
	case strings.Contains(msg, "QEMU exited"), strings.Contains(msg, "is gone before QMP"):
		return "QEMU exited"
	case strings.Contains(msg, "connection reset by peer"), strings.Contains(msg, "closed by QEMU"):
		return "QMP connection reset (QEMU killed)"
	case strings.Contains(msg, "did not power off"):
		return "shutdown timeout"
	case strings.Contains(msg, "left the queue"):
		return "left the queue"
	case strings.Contains(msg, "monitor marked broken"), strings.Contains(msg, "QMP connection lost"),
		strings.Contains(msg, "connect QMP"), strings.Contains(msg, "not sent"), strings.Contains(msg, "monitor stopped"),
		strings.Contains(msg, "QMP transport closed"):
		return "monitor broken"
	case strings.Contains(msg, "still running for this domain"):
		return "unsupervised QEMU"
	default:
		return "other"
	}
}

func (c *chaos) record(op string, err error, took time.Duration, gen, genAfter int) {
	o := outcome(err)
	c.stats.mu.Lock()
	defer c.stats.mu.Unlock()
	m := c.stats.ops[op]
	if m == nil {
		m = map[string]int{}
		c.stats.ops[op] = m
	}
	m[o]++
	if took > c.stats.maxLat[op] {
		c.stats.maxLat[op] = took
	}
	if err != nil && len(c.stats.examples[o]) < 4 {
		c.stats.examples[o] = append(c.stats.examples[o], fmt.Sprintf("%s (gen %d→%d): %v", op, gen, genAfter, err))
	}
	if o == "other" && len(c.stats.examples["other-all"]) < 40 {
		c.stats.examples["other-all"] = append(c.stats.examples["other-all"], fmt.Sprintf("%s (gen %d→%d): %v", op, gen, genAfter, err))
	}
}

func (c *chaos) checkList(infos []domain.Info, what string) {
	got := map[string]string{}
	for _, in := range infos {
		got[in.Name] = in.UUID
	}
	for _, vm := range c.vms {
		if u, ok := got[vm.name]; !ok {
			c.violate("definition", "%s: domain %s missing (listed: %d domains)", what, vm.name, len(infos))
		} else if u != vm.uuid {
			c.violate("definition", "%s: domain %s has uuid %s, want %s", what, vm.name, u, vm.uuid)
		}
	}
	if len(infos) != len(c.vms) {
		c.violate("definition", "%s: %d domains listed, want %d", what, len(infos), len(c.vms))
	}
}

// --- fault injector ----------------------------------------------------------

func (c *chaos) injector(ctx context.Context, r *rand.Rand, maxStop time.Duration) {
	c.lastSwap = time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(200+r.Intn(1000)) * time.Millisecond):
		}
		anyPanic := c.faults["panic-driver"] || c.faults["panic-domain"] || c.faults["panic-monitor"]
		switch n := r.Intn(100); {
		case n < 30:
			if c.faults["kill"] {
				c.faultKill(r)
			}
		case n < 55:
			if c.faults["stop"] {
				c.faultStop(r, maxStop)
			}
		case n < 85:
			if anyPanic {
				c.faultPanic(r)
			}
		default:
			if !c.faults["restart"] {
				continue
			}
			if time.Since(c.lastSwap) < chaosRestartEvery {
				c.stats.mu.Lock()
				c.stats.faults["driver restart skipped (too soon)"]++
				c.stats.mu.Unlock()
				if anyPanic {
					c.faultPanic(r)
				}
				continue
			}
			c.fault("driver restart")
			c.restartDriver()
			c.lastSwap = time.Now()
		}
	}
}

func (c *chaos) fault(kind string) {
	c.stats.mu.Lock()
	c.stats.faults[kind]++
	c.stats.mu.Unlock()
	c.logFault(kind)
}

var (
	faultLogMu sync.Mutex
	faultLog   []string
)

func (c *chaos) logFault(s string) {
	faultLogMu.Lock()
	defer faultLogMu.Unlock()
	faultLog = append(faultLog, time.Now().Format("15:04:05.000000")+" "+s)
	if len(faultLog) > 200 {
		faultLog = faultLog[len(faultLog)-200:]
	}
	c.cfg.Logger.Warn().Str("chaos", s).Msg("chaos fault")
}

// recentFaults lists the faults of the last 3 seconds, for violation
// messages.
func (c *chaos) recentFaults() string {
	faultLogMu.Lock()
	defer faultLogMu.Unlock()
	cut := time.Now().Add(-3 * time.Second).Format("15:04:05.000000")
	var out []string
	for _, f := range faultLog {
		if f[:15] >= cut {
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		return ""
	}
	return "\n    faults in the last 3s: " + strings.Join(out, "; ")
}

// pickQEMU returns a live QEMU of the test, opened as a pidfd so that the
// signal cannot hit a reused pid.
func (c *chaos) pickQEMU(r *rand.Rand, skipStopped bool) (int, int, *chaosVM, bool) {
	procs := c.scanQEMU()
	var pids []int
	for _, ps := range procs {
		pids = append(pids, ps...)
	}
	sort.Ints(pids)
	r.Shuffle(len(pids), func(i, j int) { pids[i], pids[j] = pids[j], pids[i] })
	for _, pid := range pids {
		if skipStopped {
			c.stoppedMu.Lock()
			_, s := c.stopped[pid]
			c.stoppedMu.Unlock()
			if s {
				continue
			}
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue
		}
		if vm := c.vmOf(pid); vm != nil {
			return pid, fd, vm, true
		}
		unix.Close(fd)
	}
	return 0, -1, nil, false
}

func (c *chaos) faultKill(r *rand.Rand) {
	pid, fd, vm, ok := c.pickQEMU(r, false)
	if !ok {
		c.fault("SIGKILL skipped (no QEMU)")
		return
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err == nil {
		c.fault(fmt.Sprintf("SIGKILL %s pid %d", vm.name, pid))
		c.countFault("SIGKILL")
	}
}

func (c *chaos) faultStop(r *rand.Rand, maxStop time.Duration) {
	pid, fd, vm, ok := c.pickQEMU(r, true)
	if !ok {
		c.fault("SIGSTOP skipped (no QEMU)")
		return
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGSTOP, nil, 0); err != nil {
		unix.Close(fd)
		return
	}
	d := 500*time.Millisecond + time.Duration(r.Int63n(int64(maxStop-500*time.Millisecond)+1))
	c.fault(fmt.Sprintf("SIGSTOP %s pid %d for %s", vm.name, pid, d.Round(time.Millisecond)))
	c.countFault("SIGSTOP+SIGCONT")
	s := &stoppedQEMU{pid: pid, pidfd: fd}
	c.stoppedMu.Lock()
	c.stopped[pid] = s
	c.stoppedMu.Unlock()
	c.stopWG.Add(1)
	go func() {
		defer c.stopWG.Done()
		select {
		case <-time.After(d):
		case <-c.stopAllCh:
		}
		c.cont(s)
	}()
}

func (c *chaos) cont(s *stoppedQEMU) {
	c.stoppedMu.Lock()
	defer c.stoppedMu.Unlock()
	if c.stopped[s.pid] != s {
		return
	}
	delete(c.stopped, s.pid)
	_ = unix.PidfdSendSignal(s.pidfd, unix.SIGCONT, nil, 0)
	unix.Close(s.pidfd)
	c.logFault(fmt.Sprintf("SIGCONT pid %d", s.pid))
}

// contAll resumes every QEMU the injector stopped.
func (c *chaos) contAll() {
	select {
	case <-c.stopAllCh:
	default:
		close(c.stopAllCh)
	}
	c.stopWG.Wait()
}

func (c *chaos) faultPanic(r *rand.Rand) {
	d, _, err := c.current()
	if err != nil {
		c.fault("panic skipped (driver swapping)")
		return
	}
	var target string
	for try := 0; try < 10; try++ {
		vm := c.vms[r.Intn(len(c.vms))]
		switch n := r.Intn(7); {
		case n == 0:
			target = "driver"
		case n < 4:
			target = "domain/" + vm.name
		default:
			target = "monitor/" + vm.name
		}
		if c.faults["panic-"+strings.SplitN(target, "/", 2)[0]] && c.allowPanic(target) {
			break
		}
		target = ""
	}
	if target == "" {
		c.fault("panic skipped (rate limit)")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), chaosCallDeadline)
	start := time.Now()
	err = d.InjectPanic(ctx, target, "chaos")
	took := time.Since(start)
	cancel()
	if took > chaosCallDeadline+chaosCallMargin {
		c.violate("call-deadline", "InjectPanic %s returned after %s", target, took)
	}
	var pe *supervision.PanicError
	kind := strings.SplitN(target, "/", 2)[0]
	if errors.As(err, &pe) {
		c.fault("panic in " + target)
		c.countFault("panic " + kind)
	} else {
		c.fault(fmt.Sprintf("panic in %s not delivered: %v", target, err))
		c.countFault("panic " + kind + " (not delivered: " + outcome(err) + ")")
	}
}

func (c *chaos) countFault(kind string) {
	c.stats.mu.Lock()
	c.stats.faults["= "+kind]++
	c.stats.mu.Unlock()
}

func (c *chaos) allowPanic(target string) bool {
	now := time.Now()
	var keep []time.Time
	for _, at := range c.panicLog[target] {
		if now.Sub(at) < time.Minute {
			keep = append(keep, at)
		}
	}
	// A driver panic restarts every domain actor too.
	limit := chaosPanicsPerMinute
	if len(keep) >= limit {
		c.panicLog[target] = keep
		return false
	}
	c.panicLog[target] = append(keep, now)
	return true
}

// --- invariant: one QEMU per domain; restarts and states seen -------------

// checker scans /proc for two QEMUs of one domain and polls List.
func (c *chaos) checker(done <-chan struct{}) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		for uuid, pids := range c.scanQEMU() {
			if len(pids) > 1 {
				sort.Ints(pids)
				key := fmt.Sprint(pids)
				if _, seen := c.seenTwo.LoadOrStore(key, true); !seen {
					vm := c.byUUID[uuid]
					var desc []string
					for _, p := range pids {
						desc = append(desc, describeProc(p))
					}
					c.violate("two-qemu", "domain %s has %d QEMUs: %s%s", vm.name, len(pids), strings.Join(desc, "; "), c.recentFaults())
				}
			}
		}
		if i%2 == 0 {
			c.pollList()
		}
	}
}

func (c *chaos) pollList() {
	d, gen, err := c.current()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), chaosCallDeadline)
	start := time.Now()
	infos, err := d.List(ctx)
	took := time.Since(start)
	cancel()
	if took > chaosCallDeadline+chaosCallMargin {
		c.violate("call-deadline", "list (checker) returned after %s", took)
	}
	c.record("list (checker)", err, took, gen, gen)
	if err != nil {
		return
	}
	c.checkList(infos, "list (checker)")
	c.stats.mu.Lock()
	defer c.stats.mu.Unlock()
	for _, in := range infos {
		key := fmt.Sprintf("%d/%s", gen, in.Name)
		if in.Restarts > c.stats.restarts[key] {
			c.stats.restarts[key] = in.Restarts
		}
		if in.Reason == domain.ReasonCrashLoop {
			c.stats.loops[key] = true
		}
		c.stats.states[string(in.State)+"/"+string(in.Reason)]++
	}
}

// scanQEMU returns the live (not zombie) QEMU processes of the test's
// domains, by UUID, from /proc.
func (c *chaos) scanQEMU() map[string][]int {
	out := map[string][]int{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		uuid := uuidOf(pid)
		if uuid == "" || c.byUUID[uuid] == nil || !processAlive(pid) {
			continue
		}
		out[uuid] = append(out[uuid], pid)
	}
	return out
}

func (c *chaos) vmOf(pid int) *chaosVM {
	return c.byUUID[uuidOf(pid)]
}

// uuidOf returns the -uuid argument of pid's command line, or "".
func uuidOf(pid int) string {
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || !bytes.Contains(cmdline, []byte("-uuid\x00")) {
		return ""
	}
	args := strings.Split(string(cmdline), "\x00")
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-uuid" {
			return args[i+1]
		}
	}
	return ""
}

func describeProc(pid int) string {
	stat, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	s := string(stat)
	state, ppid := "?", "?"
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		f := strings.Fields(s[i+2:])
		if len(f) > 1 {
			state, ppid = f[0], f[1]
		}
	}
	return fmt.Sprintf("pid %d (state %s, ppid %s)", pid, state, ppid)
}

// --- end checks ------------------------------------------------------------

// settle waits until every domain is idle and nothing changes for 2s.
func (c *chaos) settle() []domain.Info {
	deadline := time.Now().Add(chaosSettle)
	var last string
	stableSince := time.Now()
	for {
		d, _, err := c.current()
		if err != nil {
			c.t.Fatalf("settle: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		infos, err := d.List(ctx)
		cancel()
		if err != nil {
			c.t.Fatalf("settle: list: %v", err)
		}
		var b strings.Builder
		idle := true
		for _, in := range infos {
			ctl := ""
			if in.Control != nil {
				ctl = in.Control.State
			}
			fmt.Fprintf(&b, "%s %s/%s pid %d restarts %d control %s job %v queued %d\n", in.Name, in.State, in.Reason, in.PID, in.Restarts, ctl, in.Job != nil, in.Queued)
			if in.Job != nil || in.Queued != 0 || (in.PID != 0 && ctl != domain.ControlOK) {
				idle = false
			}
		}
		now := time.Now()
		if b.String() != last || !idle {
			last, stableSince = b.String(), now
		}
		if idle && now.Sub(stableSince) >= 2*time.Second {
			c.t.Logf("chaos: settled:\n%s", last)
			return infos
		}
		if now.After(deadline) {
			c.violate("settle", "domains not idle and stable within %s:\n%s", chaosSettle, b.String())
			c.summary()
			c.report()
			c.t.FailNow()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkFinalStates: every domain's state agrees with the process that
// really runs (or not) for it, and with QEMU's own run state.
func (c *chaos) checkFinalStates(infos []domain.Info) {
	d, _, err := c.current()
	if err != nil {
		c.t.Fatal(err)
	}
	c.checkList(infos, "final list")
	procs := c.scanQEMU()
	for _, in := range infos {
		vm := c.byUUID[in.UUID]
		if vm == nil {
			continue
		}
		alive := procs[vm.uuid]
		if vm.onCrash == domain.OnCrashRestart && in.State == domain.StateShutoff && in.Reason == domain.ReasonCrashed {
			// A crash under on_crash: restart ends in a restart or in
			// crashed/crash-loop; the backoff is well under the settle time.
			c.violate("restart-policy", "%s (on_crash restart) stays %s/%s: its restart was lost", in.Name, in.State, in.Reason)
		}
		if in.PID == 0 {
			if len(alive) != 0 {
				c.violate("final-state", "%s is %s/%s with pid 0, but QEMU %v runs for its uuid", in.Name, in.State, in.Reason, alive)
			}
			if in.State != domain.StateShutoff && in.State != domain.StateCrashed {
				c.violate("final-state", "%s is %s/%s without a QEMU", in.Name, in.State, in.Reason)
			}
			continue
		}
		if !processAlive(in.PID) || uuidOf(in.PID) != vm.uuid {
			c.violate("final-state", "%s is %s/%s with pid %d, which is not its live QEMU (%s; live for its uuid: %v)", in.Name, in.State, in.Reason, in.PID, describeProc(in.PID), alive)
			continue
		}
		if len(alive) != 1 || alive[0] != in.PID {
			c.violate("final-state", "%s has pid %d but the QEMUs for its uuid are %v", in.Name, in.PID, alive)
		}
		want := ""
		switch {
		case in.State == domain.StateRunning:
			want = "running"
		case in.State == domain.StatePaused && in.Reason != domain.ReasonStartingUp:
			want = "paused"
		case in.State == domain.StateCrashed && in.Reason == domain.ReasonPanicked:
			want = "guest-panicked"
		default:
			c.violate("final-state", "%s is %s/%s with a live QEMU (pid %d) and no job", in.Name, in.State, in.Reason, in.PID)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ret, err := d.Domain(in.Name).QMP(ctx, json.RawMessage(`{"execute":"query-status"}`))
		cancel()
		if err != nil {
			c.violate("final-state", "%s: query-status after settling: %v", in.Name, err)
			continue
		}
		var st struct {
			Status string `json:"status"`
		}
		_ = json.Unmarshal(ret, &st)
		ok := st.Status == want || (want == "paused" && (st.Status == "prelaunch" || st.Status == "suspended"))
		if !ok {
			c.violate("final-state", "%s: vmsup says %s/%s, QEMU (pid %d) says %q", in.Name, in.State, in.Reason, in.PID, st.Status)
		}
	}
}

// checkDefinitions: every definition file parses, names its domain with its
// UUID and has the bytes of the first define; no temp file is left.
func (c *chaos) checkDefinitions() {
	dir := filepath.Join(c.cfg.StateDir, "domains")
	entries, err := os.ReadDir(dir)
	if err != nil {
		c.violate("definition", "read %s: %v", dir, err)
		return
	}
	found := map[string]bool{}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), ".") {
			c.violate("definition", "temp file left in the state dir: %s", path)
			continue
		}
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			c.violate("definition", "unexpected file in the state dir: %s", path)
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			c.violate("definition", "read %s: %v", path, err)
			continue
		}
		spec, err := domain.ParseSpec(data)
		if err != nil {
			c.violate("definition", "%s does not parse: %v", path, err)
			continue
		}
		var vm *chaosVM
		for _, v := range c.vms {
			if v.name == name {
				vm = v
			}
		}
		switch {
		case vm == nil:
			c.violate("definition", "unknown definition %s", path)
		case spec.Name != name || spec.UUID != vm.uuid:
			c.violate("definition", "%s names %s uuid %s, want %s uuid %s", path, spec.Name, spec.UUID, name, vm.uuid)
		case !bytes.Equal(data, vm.file):
			c.violate("definition", "%s changed:\n%s\nwant:\n%s", path, data, vm.file)
		}
		found[name] = true
	}
	for _, vm := range c.vms {
		if !found[vm.name] {
			c.violate("definition", "definition of %s lost", vm.name)
		}
	}
	// Saved status files, when present, parse and carry the right UUID.
	sdir := filepath.Join(c.cfg.StateDir, "status")
	entries, _ = os.ReadDir(sdir)
	for _, e := range entries {
		path := filepath.Join(sdir, e.Name())
		if strings.HasPrefix(e.Name(), ".") {
			c.violate("definition", "temp file left in the status dir: %s", path)
			continue
		}
		data, err := os.ReadFile(path)
		var st domain.Status
		if err == nil {
			err = json.Unmarshal(data, &st)
		}
		if err != nil {
			c.violate("definition", "status %s: %v", path, err)
			continue
		}
		if vm := c.byUUID[st.UUID]; vm == nil || vm.name+".json" != e.Name() {
			c.violate("definition", "status %s names %s uuid %s", path, st.Name, st.UUID)
		}
	}
}

// destroyAll destroys every domain; afterwards none may have a QEMU.
func (c *chaos) destroyAll() {
	d, _, err := c.current()
	if err != nil {
		c.t.Fatal(err)
	}
	for _, vm := range c.vms {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := d.Domain(vm.name).Destroy(ctx)
		cancel()
		if err != nil && !errors.Is(err, domain.ErrNotRunning) {
			c.violate("final-destroy", "destroy %s: %v", vm.name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	infos, err := d.List(ctx)
	if err != nil {
		c.violate("final-destroy", "list: %v", err)
		return
	}
	for _, in := range infos {
		if in.PID != 0 || in.State != domain.StateShutoff {
			c.violate("final-destroy", "%s is %s/%s pid %d after destroy", in.Name, in.State, in.Reason, in.PID)
		}
	}
}

// checkNoQEMU: after the driver closed, no QEMU lives for the test's UUIDs.
func (c *chaos) checkNoQEMU() {
	deadline := time.Now().Add(5 * time.Second)
	for {
		procs := c.scanQEMU()
		if len(procs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.violate("leak", "QEMU still alive after destroy and close: %v", procs)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkNoJobs: no job goroutine of any driver generation still holds a
// domain once the last driver closed.
func (c *chaos) checkNoJobs() {
	deadline := time.Now().Add(5 * time.Second)
	for {
		var left []string
		for name, s := range c.slots {
			s.mu.Lock()
			for _, j := range s.active {
				left = append(left, name+": "+j.String())
			}
			s.mu.Unlock()
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.violate("leak", "jobs still running after the driver closed: %s", strings.Join(left, "; "))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkSockets: no process has a socket bound under the run dir (QEMU's
// qmp.sock and console.sock), and this process holds no more sockets than
// before the first driver opened (vmsup's QMP and console connections).
func (c *chaos) checkSockets(baseSockets int) {
	data, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		c.t.Logf("chaos: cannot read /proc/net/unix: %v", err)
	} else {
		for _, line := range strings.Split(string(data), "\n") {
			if strings.Contains(line, c.cfg.RunDir) {
				c.violate("leak", "a socket under the run dir is still open: %s", strings.TrimSpace(line))
			}
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		n := countSocketFDs()
		if n <= baseSockets {
			return
		}
		if time.Now().After(deadline) {
			c.violate("leak", "this process holds %d sockets, %d before the first driver opened", n, baseSockets)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func countSocketFDs() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// checkGoroutines: the goroutine count comes back to the baseline.
func (c *chaos) checkGoroutines(base int, baseStacks map[string]int) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base+chaosGoroutineSlack {
			c.t.Logf("chaos: goroutines: %d at the baseline, %d at the end", base, n)
			return
		}
		if time.Now().After(deadline) {
			var extra []string
			for fn, k := range goroutineStacks() {
				if k > baseStacks[fn] {
					extra = append(extra, fmt.Sprintf("%d× %s", k-baseStacks[fn], fn))
				}
			}
			sort.Strings(extra)
			c.violate("leak", "%d goroutines after close, %d at the baseline; new ones:\n      %s", n, base, strings.Join(extra, "\n      "))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// goroutineStacks counts goroutines by the first frame of theirs that is
// not in the runtime (where they were created, if they block in it).
func goroutineStacks() map[string]int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	out := map[string]int{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		lines := strings.Split(g, "\n")
		key := ""
		for i := 1; i+1 < len(lines); i += 2 {
			fn := lines[i]
			if strings.HasPrefix(fn, "runtime.") || strings.HasPrefix(fn, "internal/") || strings.HasPrefix(fn, "sync.") ||
				strings.HasPrefix(fn, "time.") || strings.HasPrefix(fn, "os.") || strings.HasPrefix(fn, "syscall.") ||
				strings.HasPrefix(fn, "net.") || strings.HasPrefix(fn, "bufio.") || strings.HasPrefix(fn, "io.") {
				continue
			}
			key = fn
			break
		}
		if key == "" && len(lines) > 1 {
			key = lines[1]
		}
		if i := strings.LastIndexByte(key, '('); i > 0 {
			key = key[:i]
		}
		for _, l := range lines {
			if strings.HasPrefix(l, "created by ") {
				key += " [" + strings.TrimPrefix(l, "created by ") + "]"
				break
			}
		}
		out[key]++
	}
	return out
}

// --- reporting ---------------------------------------------------------------

func (c *chaos) violate(kind, format string, args ...any) {
	msg := time.Now().Format("15:04:05.000000") + " " + fmt.Sprintf(format, args...)
	c.vmu.Lock()
	defer c.vmu.Unlock()
	c.vcount[kind]++
	if len(c.violations[kind]) < 10 {
		c.violations[kind] = append(c.violations[kind], msg)
	}
	if c.cfg.Logger != nil {
		c.cfg.Logger.Error().Str("chaos_violation", kind).Msg(msg)
	}
}

func (c *chaos) summary() {
	c.stats.mu.Lock()
	defer c.stats.mu.Unlock()
	var b strings.Builder
	var ops []string
	for op := range c.stats.ops {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	total := 0
	b.WriteString("chaos summary\n  calls by kind and outcome (slowest call):\n")
	for _, op := range ops {
		var parts []string
		n := 0
		for o, k := range c.stats.ops[op] {
			parts = append(parts, fmt.Sprintf("%s %d", o, k))
			n += k
		}
		sort.Strings(parts)
		total += n
		fmt.Fprintf(&b, "    %-18s %5d: %s (max %s)\n", op, n, strings.Join(parts, ", "), c.stats.maxLat[op].Round(time.Millisecond))
	}
	fmt.Fprintf(&b, "  %d calls, %d jobs started\n  faults:\n", total, c.jobsRun.Load())
	var fs []string
	for f, k := range c.stats.faults {
		if strings.HasPrefix(f, "= ") {
			fs = append(fs, fmt.Sprintf("    %-40s %d", strings.TrimPrefix(f, "= "), k))
		}
	}
	if took := c.stats.maxLat["driver.Close (restart)"]; took > 0 {
		fs = append(fs, fmt.Sprintf("    %-40s %s", "slowest driver.Close of a restart", took.Round(time.Millisecond)))
	}
	for _, f := range []string{"driver restart", "driver restart skipped (too soon)", "SIGKILL skipped (no QEMU)", "SIGSTOP skipped (no QEMU)", "panic skipped (rate limit)", "panic skipped (driver swapping)"} {
		if k := c.stats.faults[f]; k > 0 {
			fs = append(fs, fmt.Sprintf("    %-40s %d", f, k))
		}
	}
	sort.Strings(fs)
	b.WriteString(strings.Join(fs, "\n") + "\n")
	restarts, loops := 0, 0
	for _, k := range c.stats.restarts {
		restarts += k
	}
	for range c.stats.loops {
		loops++
	}
	fmt.Fprintf(&b, "  on_crash restarts seen (sum over driver generations): %d; crash loops seen: %d; driver generations: %d\n", restarts, loops, c.gen)
	var evs []string
	for e, k := range c.stats.events {
		evs = append(evs, fmt.Sprintf("%s %d", e, k))
	}
	sort.Strings(evs)
	fmt.Fprintf(&b, "  lifecycle events: %s\n", strings.Join(evs, ", "))
	var sts []string
	for s, k := range c.stats.states {
		sts = append(sts, fmt.Sprintf("%s %d", s, k))
	}
	sort.Strings(sts)
	fmt.Fprintf(&b, "  states seen in list polls: %s\n", strings.Join(sts, ", "))
	var outs []string
	for o, ex := range c.stats.examples {
		if o == "ok" || o == "other-all" {
			continue
		}
		outs = append(outs, fmt.Sprintf("    %s: %s", o, ex[0]))
	}
	sort.Strings(outs)
	b.WriteString("  an example of each error outcome:\n" + strings.Join(outs, "\n") + "\n")
	if all := c.stats.examples["other-all"]; len(all) > 0 {
		b.WriteString("  unclassified errors:\n    " + strings.Join(all, "\n    ") + "\n")
	}
	c.t.Log(b.String())
}

// report fails the test with every invariant violation.
func (c *chaos) report() {
	c.vmu.Lock()
	defer c.vmu.Unlock()
	var kinds []string
	for k := range c.vcount {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		c.t.Errorf("chaos invariant %q violated %d times; first ones:\n  %s", k, c.vcount[k], strings.Join(c.violations[k], "\n  "))
	}
}

func (c *chaos) dumpOnFailure() {
	c.report()
	buf := make([]byte, 4<<20)
	c.t.Logf("goroutines:\n%s", buf[:runtime.Stack(buf, true)])
}

// cleanup runs whatever happened: resume and kill every QEMU of the test,
// close the driver, and keep the vmsup log if the test failed.
func (c *chaos) cleanup() {
	c.stopChecker()
	c.contAll()
	if d, subStop := c.detach(); d != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = d.Close(ctx)
		cancel()
		if subStop != nil {
			subStop()
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		procs := c.scanQEMU()
		if len(procs) == 0 {
			break
		}
		for _, pids := range procs {
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGCONT)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if time.Now().After(deadline) {
			c.t.Errorf("chaos cleanup: QEMUs %v survive SIGKILL", procs)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.logFile.Close()
	if c.t.Failed() {
		c.t.Logf("chaos: vmsup debug log kept at %s", c.logPath)
	} else {
		os.Remove(c.logPath)
	}
}

func waitGroupWithin(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
}
