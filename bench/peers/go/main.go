// The Go SDK peer of the benchmark: an activity-only worker with a no-op activity ("Noop") and a
// sleeping one ("Sleep", for the shutdown measurements).
//
//	bench-go-worker -address 127.0.0.1:7233 -task-queue Q [-slots 100 -pollers 8 -stop-timeout 10s]
//	bench-go-worker -address 127.0.0.1:7233 -task-queue Q -defaults
//
// -defaults leaves every worker option at the SDK's default (2 pollers, 1000 slots, stop timeout 0).
// SIGTERM or SIGINT stops the worker (worker.InterruptCh), as a Go service would.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"
)

// Noop does nothing.
func Noop(ctx context.Context) error { return nil }

// Sleep waits the given number of milliseconds (default 2000), or until cancelled.
func Sleep(ctx context.Context, ms int) error {
	if ms <= 0 {
		ms = 2000
	}
	select {
	case <-time.After(time.Duration(ms) * time.Millisecond):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func main() {
	address := flag.String("address", "127.0.0.1:7233", "frontend host:port")
	namespace := flag.String("namespace", "default", "namespace")
	taskQueue := flag.String("task-queue", "", "activity task queue")
	slots := flag.Int("slots", 100, "MaxConcurrentActivityExecutionSize")
	pollers := flag.Int("pollers", 8, "MaxConcurrentActivityTaskPollers")
	stopTimeout := flag.Duration("stop-timeout", 10*time.Second, "WorkerStopTimeout")
	defaults := flag.Bool("defaults", false, "leave the worker options at the SDK defaults")
	flag.Parse()
	if *taskQueue == "" {
		fmt.Fprintln(os.Stderr, "-task-queue is required")
		os.Exit(2)
	}

	logger := sdklog.NewStructuredLogger(slog.New(slog.NewTextHandler(os.Stderr,
		&slog.HandlerOptions{Level: slog.LevelWarn})))
	c, err := client.Dial(client.Options{HostPort: *address, Namespace: *namespace, Logger: logger})
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	defer c.Close()

	opts := worker.Options{DisableWorkflowWorker: true}
	if !*defaults {
		opts.MaxConcurrentActivityExecutionSize = *slots
		opts.MaxConcurrentActivityTaskPollers = *pollers
		opts.WorkerStopTimeout = *stopTimeout
	}
	w := worker.New(c, *taskQueue, opts)
	w.RegisterActivityWithOptions(Noop, activity.RegisterOptions{Name: "Noop"})
	w.RegisterActivityWithOptions(Sleep, activity.RegisterOptions{Name: "Sleep"})
	if err := w.Run(worker.InterruptCh()); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}
