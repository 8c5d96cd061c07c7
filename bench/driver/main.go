// The benchmark's load driver: starts standalone activities (StartActivityExecution) on a task queue
// and reads their outcome back from the server. It is the same for every worker under test.
//
//	driver closed -task-queue Q -prefix P -inflight W -duration D
//	    closed loop: keep about W activities outstanding (started minus completed, the completed count
//	    read from visibility every 50 ms) for D, then stop starting. Prints a JSON summary.
//	driver open -task-queue Q -prefix P -rate R -duration D -warmup U
//	    open loop at R starts/s for D; then waits for every activity to close and describes the ones
//	    started after U to compute schedule-to-start (last_started_time - schedule_time) percentiles.
//	driver start -task-queue Q -prefix P -n K [-type Sleep -input 2000] [-wait-started]
//	    start K activities at once; with -wait-started, return once the server shows each started.
//	driver verify -task-queue Q -prefix P -n K [-timeout T]
//	    wait (at most T) until P-1..P-K are all closed; print their final statuses.
//	driver count -task-queue Q
//	    the number of activities on Q by status.
//
// Every activity: start-to-close 60 s, one attempt (no retries: a failure or a timeout stays visible
// as such instead of becoming a hidden retry).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	taskqueuepb "go.temporal.io/api/taskqueue/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"google.golang.org/protobuf/types/known/durationpb"
)

type driver struct {
	svc       workflowservice.WorkflowServiceClient
	namespace string
	taskQueue string
	prefix    string
	actType   string
	input     *commonpb.Payloads
	s2c       time.Duration
}

func (d *driver) id(seq int64) string { return d.prefix + "-" + strconv.FormatInt(seq, 10) }

func (d *driver) start(ctx context.Context, seq int64) error {
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := d.svc.StartActivityExecution(c, &workflowservice.StartActivityExecutionRequest{
		Namespace:           d.namespace,
		Identity:            "bench-driver",
		RequestId:           d.id(seq),
		ActivityId:          d.id(seq),
		ActivityType:        &commonpb.ActivityType{Name: d.actType},
		TaskQueue:           &taskqueuepb.TaskQueue{Name: d.taskQueue, Kind: enumspb.TASK_QUEUE_KIND_NORMAL},
		StartToCloseTimeout: durationpb.New(d.s2c),
		RetryPolicy:         &commonpb.RetryPolicy{MaximumAttempts: 1},
		Input:               d.input,
	})
	return err
}

func (d *driver) count(ctx context.Context, status string) (int64, error) {
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	q := fmt.Sprintf("TaskQueue = %q", d.taskQueue)
	if status != "" {
		q += fmt.Sprintf(" AND ExecutionStatus = %q", status)
	}
	r, err := d.svc.CountActivityExecutions(c, &workflowservice.CountActivityExecutionsRequest{
		Namespace: d.namespace, Query: q})
	if err != nil {
		return 0, err
	}
	return r.Count, nil
}

var statuses = []string{"Running", "Completed", "Failed", "Canceled", "Terminated", "TimedOut"}

func (d *driver) counts(ctx context.Context) (map[string]int64, error) {
	out := map[string]int64{}
	for _, s := range statuses {
		n, err := d.count(ctx, s)
		if err != nil {
			return nil, err
		}
		out[s] = n
	}
	return out, nil
}

func (d *driver) describe(ctx context.Context, seq int64) (*workflowservice.DescribeActivityExecutionResponse, error) {
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return d.svc.DescribeActivityExecution(c, &workflowservice.DescribeActivityExecutionRequest{
		Namespace: d.namespace, ActivityId: d.id(seq)})
}

// pool runs fn(seq) for the sequence numbers sent on the returned channel with n goroutines.
func pool(n int, fn func(int64)) (chan<- int64, *sync.WaitGroup) {
	ch := make(chan int64, 100000)
	wg := &sync.WaitGroup{}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range ch {
				fn(s)
			}
		}()
	}
	return ch, wg
}

type startStats struct {
	started, errors, pending atomic.Int64
	mu                       sync.Mutex
	firstError               string
}

func (s *startStats) record(err error) {
	s.pending.Add(-1)
	if err == nil {
		s.started.Add(1)
		return
	}
	s.errors.Add(1)
	s.mu.Lock()
	if s.firstError == "" {
		s.firstError = err.Error()
	}
	s.mu.Unlock()
}

func emit(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func fatal(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "driver: "+format+"\n", a...)
	os.Exit(1)
}

// ---- closed loop ----------------------------------------------------------------------------

func runClosed(ctx context.Context, d *driver, inflight int64, duration time.Duration, conc int) {
	var st startStats
	var completed atomic.Int64
	var countErrors atomic.Int64
	stop := make(chan struct{})
	deadline := time.Now().Add(duration)

	go func() { // the completed count, from visibility
		for {
			select {
			case <-stop:
				return
			default:
			}
			if n, err := d.count(ctx, "Completed"); err == nil {
				completed.Store(n)
			} else {
				countErrors.Add(1)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()

	jobs, wg := pool(conc, func(seq int64) { st.record(d.start(ctx, seq)) })
	var seq int64
	tick := time.NewTicker(2 * time.Millisecond)
loop:
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
		}
		out := st.started.Load() + st.pending.Load() - completed.Load()
		for ; out < inflight; out++ {
			seq++
			st.pending.Add(1)
			jobs <- seq
		}
	}
	tick.Stop()
	close(jobs)
	wg.Wait()
	close(stop)
	emit(map[string]any{"mode": "closed", "issued": seq, "started": st.started.Load(),
		"start_errors": st.errors.Load(), "first_error": st.firstError,
		"count_errors": countErrors.Load(), "last_completed_seen": completed.Load()})
}

// ---- open loop ------------------------------------------------------------------------------

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

func waitClosed(ctx context.Context, d *driver, want int64, timeout time.Duration) map[string]int64 {
	deadline := time.Now().Add(timeout)
	var c map[string]int64
	for {
		var err error
		c, err = d.counts(ctx)
		if err == nil && c["Running"] == 0 && c["Completed"]+c["Failed"]+c["Canceled"]+c["Terminated"]+c["TimedOut"] >= want {
			return c
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return c
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func runOpen(ctx context.Context, d *driver, rate float64, duration, warmup time.Duration, conc int, maxSamples int) {
	var st startStats
	jobs, wg := pool(conc, func(seq int64) { st.record(d.start(ctx, seq)) })
	t0 := time.Now()
	var seq int64
	firstMeasured := int64(-1)
	tick := time.NewTicker(time.Millisecond)
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
		}
		el := time.Since(t0)
		if el >= duration {
			break
		}
		if firstMeasured < 0 && el >= warmup {
			firstMeasured = seq + 1
		}
		want := int64(el.Seconds() * rate)
		for seq < want {
			seq++
			st.pending.Add(1)
			jobs <- seq
		}
	}
	tick.Stop()
	close(jobs)
	wg.Wait()
	elapsed := time.Since(t0)
	if firstMeasured < 0 {
		firstMeasured = seq + 1
	}
	final := waitClosed(ctx, d, st.started.Load(), 60*time.Second)

	// Describe the measured activities (every k-th if there are too many).
	n := seq - firstMeasured + 1
	step := int64(1)
	if maxSamples > 0 && n > int64(maxSamples) {
		step = (n + int64(maxSamples) - 1) / int64(maxSamples)
	}
	var mu sync.Mutex
	var s2s []float64
	var notStarted, attemptsGt1, describeErrors int64
	djobs, dwg := pool(16, func(s int64) {
		r, err := d.describe(ctx, s)
		mu.Lock()
		defer mu.Unlock()
		if err != nil || r.Info == nil {
			describeErrors++
			return
		}
		if r.Info.Attempt > 1 {
			attemptsGt1++
		}
		if r.Info.LastStartedTime == nil || r.Info.ScheduleTime == nil {
			notStarted++
			return
		}
		s2s = append(s2s, r.Info.LastStartedTime.AsTime().Sub(r.Info.ScheduleTime.AsTime()).Seconds()*1000)
	})
	for s := firstMeasured; s <= seq; s += step {
		djobs <- s
	}
	close(djobs)
	dwg.Wait()
	sort.Float64s(s2s)
	mean := 0.0
	for _, v := range s2s {
		mean += v
	}
	if len(s2s) > 0 {
		mean /= float64(len(s2s))
	}
	emit(map[string]any{"mode": "open", "offered_rate": rate, "issued": seq, "started": st.started.Load(),
		"start_errors": st.errors.Load(), "first_error": st.firstError,
		"achieved_start_rate": float64(st.started.Load()) / elapsed.Seconds(),
		"samples":             len(s2s), "not_started": notStarted, "attempts_gt1": attemptsGt1,
		"describe_errors": describeErrors, "counts": final,
		"s2s_ms": map[string]float64{"p50": percentile(s2s, 50), "p90": percentile(s2s, 90),
			"p99": percentile(s2s, 99), "max": percentile(s2s, 100), "mean": mean}})
}

// ---- start a batch / verify ------------------------------------------------------------------

func runStart(ctx context.Context, d *driver, n int64, waitStarted bool, timeout time.Duration) {
	var st startStats
	jobs, wg := pool(32, func(seq int64) { st.record(d.start(ctx, seq)) })
	for s := int64(1); s <= n; s++ {
		st.pending.Add(1)
		jobs <- s
	}
	close(jobs)
	wg.Wait()
	startedOnWorker := int64(-1)
	if waitStarted {
		deadline := time.Now().Add(timeout)
		for {
			var k atomic.Int64
			djobs, dwg := pool(16, func(s int64) {
				if r, err := d.describe(ctx, s); err == nil && r.Info != nil && r.Info.LastStartedTime != nil {
					k.Add(1)
				}
			})
			for s := int64(1); s <= n; s++ {
				djobs <- s
			}
			close(djobs)
			dwg.Wait()
			startedOnWorker = k.Load()
			if startedOnWorker >= n || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	emit(map[string]any{"mode": "start", "started": st.started.Load(), "start_errors": st.errors.Load(),
		"first_error": st.firstError, "started_on_worker": startedOnWorker})
}

func runVerify(ctx context.Context, d *driver, n int64, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	var res map[string]int64
	var open []map[string]string
	for {
		res = map[string]int64{}
		open = nil
		var mu sync.Mutex
		djobs, dwg := pool(16, func(s int64) {
			r, err := d.describe(ctx, s)
			k := "Unknown"
			mu.Lock()
			defer mu.Unlock()
			if err == nil && r.Info != nil {
				k = r.Info.Status.String()
				if r.Info.Attempt > 1 {
					res["attempts_gt1"]++
				}
				if r.Info.Status != enumspb.ACTIVITY_EXECUTION_STATUS_COMPLETED {
					started := ""
					if r.Info.LastStartedTime != nil {
						started = r.Info.LastStartedTime.AsTime().Format(time.RFC3339Nano)
					}
					open = append(open, map[string]string{"id": d.id(s), "status": k,
						"started": started, "worker": r.Info.LastWorkerIdentity})
				}
			}
			res[k]++
		})
		for s := int64(1); s <= n; s++ {
			djobs <- s
		}
		close(djobs)
		dwg.Wait()
		if res["Running"] == 0 && res["Unknown"] == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	emit(map[string]any{"mode": "verify", "statuses": res, "not_completed": open})
}

func main() {
	if len(os.Args) < 2 {
		fatal("usage: driver closed|open|start|verify|count [flags]")
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	address := fs.String("address", "127.0.0.1:7233", "frontend host:port")
	namespace := fs.String("namespace", "default", "namespace")
	taskQueue := fs.String("task-queue", "", "task queue")
	prefix := fs.String("prefix", "a", "activity id prefix")
	actType := fs.String("type", "Noop", "activity type")
	input := fs.String("input", "", "one JSON argument (empty: no input)")
	inflight := fs.Int64("inflight", 400, "closed: outstanding activities")
	rate := fs.Float64("rate", 100, "open: starts per second")
	duration := fs.Duration("duration", 30*time.Second, "closed/open: how long to start activities")
	warmup := fs.Duration("warmup", 5*time.Second, "open: activities started before this are not measured")
	conc := fs.Int("concurrency", 32, "concurrent start calls")
	samples := fs.Int("samples", 5000, "open: at most this many activities described")
	n := fs.Int64("n", 10, "start/verify: number of activities")
	waitStarted := fs.Bool("wait-started", false, "start: wait until each has started on a worker")
	timeout := fs.Duration("timeout", 30*time.Second, "start/verify: bound of the wait")
	s2c := fs.Duration("start-to-close", 60*time.Second, "start-to-close timeout of each activity")
	_ = fs.Parse(os.Args[2:])
	if *taskQueue == "" {
		fatal("-task-queue is required")
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	c, err := client.Dial(client.Options{HostPort: *address, Namespace: *namespace})
	if err != nil {
		fatal("dial: %v", err)
	}
	defer c.Close()
	d := &driver{svc: c.WorkflowService(), namespace: *namespace, taskQueue: *taskQueue, prefix: *prefix,
		actType: *actType, s2c: *s2c}
	if *input != "" {
		d.input = &commonpb.Payloads{Payloads: []*commonpb.Payload{{
			Metadata: map[string][]byte{"encoding": []byte("json/plain")}, Data: []byte(*input)}}}
	}

	switch mode {
	case "closed":
		runClosed(ctx, d, *inflight, *duration, *conc)
	case "open":
		runOpen(ctx, d, *rate, *duration, *warmup, *conc, *samples)
	case "start":
		runStart(ctx, d, *n, *waitStarted, *timeout)
	case "verify":
		runVerify(ctx, d, *n, *timeout)
	case "count":
		cs, err := d.counts(ctx)
		if err != nil {
			fatal("count: %v", err)
		}
		emit(map[string]any{"mode": "count", "counts": cs})
	default:
		fatal("unknown mode %q", mode)
	}
}
