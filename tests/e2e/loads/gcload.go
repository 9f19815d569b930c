// A Go service's heap under load, its runtime counters on /metrics in the Go client's names and
// types (standard library only):
//
//	gcload <live_mb> <alloc_mb_per_s, 0 = as fast as it can> <limit_mb, 0 = none> <seconds> [wait]
//
// It builds a live set of small pointer-rich nodes (what a cache or a session table is: the
// collector must trace every one), then allocates short-lived 8 KB buffers over it. With a
// memory limit (GOMEMLIMIT's debug.SetMemoryLimit) just above the live set, the heap target
// cannot grow: collections back to back (a Go GC death spiral, its CPU capped at 50 % by the
// runtime's limiter). With a small live set and a paced rate it is a busy, healthy service.
// With "wait" it allocates only from SIGUSR1 on (a test's fault starts then).
//
// stderr: "METRICS <url>" once /metrics is served, "CHURN" when the churn starts, then once a
// second "gc_cpu_fraction=<since start> gc_cpu_share=<over the last second>" (the runtime's
// own GC CPU accounting, for the record), "allocated <bytes> in <seconds> s" at the end.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"
)

type node struct {
	next    *node
	peer    *node
	payload [48]byte
}

var sink []byte

// When the program started, for process_start_time_seconds (the Go client's process collector
// reads it from /proc; the runtime starts a few milliseconds before main).
var started = time.Now()

// What the Go client (prometheus/client_golang's Go and process collectors, before v1.12.2
// dropped go_memstats_gc_cpu_fraction for Go 1.17+) exposes for these counters:
// go_gc_duration_seconds from debug.ReadGCStats' pause quantiles (stop-the-world pauses only),
// go_memstats_* from runtime.ReadMemStats, process_start_time_seconds.
func metrics(w http.ResponseWriter, _ *http.Request) {
	stats := debug.GCStats{PauseQuantiles: make([]time.Duration, 5)}
	debug.ReadGCStats(&stats)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	fmt.Fprintln(w, "# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.")
	fmt.Fprintln(w, "# TYPE go_gc_duration_seconds summary")
	for i, q := range []string{"0", "0.25", "0.5", "0.75", "1"} {
		fmt.Fprintf(w, "go_gc_duration_seconds{quantile=%q} %g\n", q, stats.PauseQuantiles[i].Seconds())
	}
	fmt.Fprintf(w, "go_gc_duration_seconds_sum %g\n", stats.PauseTotal.Seconds())
	fmt.Fprintf(w, "go_gc_duration_seconds_count %d\n", stats.NumGC)
	fmt.Fprintln(w, "# HELP go_goroutines Number of goroutines that currently exist.")
	fmt.Fprintln(w, "# TYPE go_goroutines gauge")
	fmt.Fprintf(w, "go_goroutines %d\n", runtime.NumGoroutine())
	fmt.Fprintln(w, "# HELP go_memstats_alloc_bytes_total Total number of bytes allocated, even if freed.")
	fmt.Fprintln(w, "# TYPE go_memstats_alloc_bytes_total counter")
	fmt.Fprintf(w, "go_memstats_alloc_bytes_total %d\n", ms.TotalAlloc)
	fmt.Fprintln(w, "# HELP go_memstats_heap_alloc_bytes Number of heap bytes allocated and still in use.")
	fmt.Fprintln(w, "# TYPE go_memstats_heap_alloc_bytes gauge")
	fmt.Fprintf(w, "go_memstats_heap_alloc_bytes %d\n", ms.HeapAlloc)
	fmt.Fprintln(w, "# HELP go_memstats_gc_cpu_fraction The fraction of this program's available CPU time used by the GC since the program started.")
	fmt.Fprintln(w, "# TYPE go_memstats_gc_cpu_fraction gauge")
	fmt.Fprintf(w, "go_memstats_gc_cpu_fraction %v\n", ms.GCCPUFraction)
	fmt.Fprintln(w, "# HELP go_memstats_last_gc_time_seconds Number of seconds since 1970 of last garbage collection.")
	fmt.Fprintln(w, "# TYPE go_memstats_last_gc_time_seconds gauge")
	fmt.Fprintf(w, "go_memstats_last_gc_time_seconds %.9f\n", float64(ms.LastGC)/1e9)
	fmt.Fprintln(w, "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.")
	fmt.Fprintln(w, "# TYPE process_start_time_seconds gauge")
	fmt.Fprintf(w, "process_start_time_seconds %.3f\n", float64(started.UnixNano())/1e9)
}

// The runtime's GC CPU fraction is cumulative since the start; its share over the last second
// is the difference of GC CPU time over the difference of available CPU time.
func report(start time.Time) {
	procs := float64(runtime.GOMAXPROCS(0))
	prevGC, prevT := 0.0, 0.0
	for range time.Tick(time.Second) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		t := time.Since(start).Seconds()
		gc := ms.GCCPUFraction * t * procs
		fmt.Fprintf(os.Stderr, "gc_cpu_fraction=%.3f gc_cpu_share=%.3f num_gc=%d pause_total_s=%.4f\n",
			ms.GCCPUFraction, (gc-prevGC)/((t-prevT)*procs), ms.NumGC, float64(ms.PauseTotalNs)/1e9)
		prevGC, prevT = gc, t
	}
}

func main() {
	if len(os.Args) < 5 {
		fmt.Fprintln(os.Stderr, "usage: gcload <live_mb> <alloc_mb_per_s> <limit_mb> <seconds> [wait]")
		os.Exit(2)
	}
	liveMB, _ := strconv.Atoi(os.Args[1])
	rateMB, _ := strconv.ParseFloat(os.Args[2], 64)
	limitMB, _ := strconv.ParseInt(os.Args[3], 10, 64)
	seconds, _ := strconv.ParseFloat(os.Args[4], 64)
	wait := len(os.Args) > 5 && os.Args[5] == "wait"
	start := time.Now()

	live := make([]*node, liveMB<<20/int(64))
	for i := range live {
		live[i] = &node{}
		if i > 0 {
			live[i].next = live[i-1]
			live[i].peer = live[i/2]
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0") // loopback only
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	http.HandleFunc("/metrics", metrics)
	go http.Serve(ln, nil)
	fmt.Fprintf(os.Stderr, "METRICS http://%s/metrics\n", ln.Addr())
	go report(start)

	if wait {
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		<-usr1
	}
	// The limit from here on: a limit the live set already fills makes an idle program's
	// scavenger and collector run in bursts (CPU swinging around 50 %, measured).
	if limitMB > 0 {
		debug.SetMemoryLimit(limitMB << 20)
	}
	fmt.Fprintln(os.Stderr, "CHURN")
	began := time.Now()
	ratePerS := rateMB * (1 << 20)
	var allocated float64
	k := 0
	for time.Since(began).Seconds() < seconds {
		for i := 0; i < 128; i++ { // 1 MB per round
			sink = make([]byte, 8192)
		}
		allocated += 128 * 8192
		k++
		if k&63 == 0 { // churn the live set a little too
			j := (k >> 6) % len(live)
			live[j] = &node{next: live[(j+1)%len(live)]}
		}
		if ratePerS > 0 {
			due := began.Add(time.Duration(allocated / ratePerS * 1e9))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
	}
	fmt.Fprintf(os.Stderr, "allocated %.0f bytes in %.1f s\n", allocated, time.Since(began).Seconds())
	runtime.KeepAlive(live)
}
