package sqlitestore_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
	"github.com/quilt/quilt/quiltcore/store/sqlitestore"
)

const killChildEnv = "QUILT_SQLITESTORE_KILL_CHILD_DIR"

const killWriters = 4

// TestKill9Child is the child half of TestKill9: it inserts batches from
// several goroutines until killed, printing "ack WRITER SEQ" after each
// InsertEvents returns (SEQ is the batch's last sequence number).
func TestKill9Child(t *testing.T) {
	dir := os.Getenv(killChildEnv)
	if dir == "" {
		t.Skip("child of TestKill9 only")
	}
	s, err := sqlitestore.Open(dir, sqlitestore.Options{})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < killWriters; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for seq := 0; ; {
				evs := make([]*quiltv1.Event, 50)
				for i := range evs {
					evs[i] = killEvent(w, seq)
					seq++
				}
				if _, err := s.InsertEvents(context.Background(), "src", evs, nil); err != nil {
					fmt.Println("insert:", err)
					os.Exit(2)
				}
				mu.Lock()
				fmt.Printf("ack %d %d\n", w, seq-1)
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
}

func killEvent(w, seq int) *quiltv1.Event {
	return &quiltv1.Event{
		Id: fmt.Sprintf("w%d-%08d", w, seq), Server: "net", Channel: "#c", Kind: quiltv1.EventKind_EVENT_KIND_MESSAGE,
		Time: timestamppb.New(time.Unix(1700000000, int64(seq))), User: &quiltv1.User{Transient: fmt.Sprint("u", w)},
		Text: strings.Repeat("x", 40),
	}
}

// TestKill9 kills a process mid-burst of inserts and checks that every
// acknowledged event is stored exactly once after reopening.
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9Child$", "-test.count=1")
	cmd.Env = append(os.Environ(), killChildEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := make([]int, killWriters)
	for i := range acked {
		acked[i] = -1
	}
	sc := bufio.NewScanner(out)
	acks := 0
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[0] != "ack" {
			t.Logf("child: %s", sc.Text())
			continue
		}
		w, _ := strconv.Atoi(f[1])
		seq, _ := strconv.Atoi(f[2])
		acked[w] = seq
		acks++
		if acks == 200 {
			// SIGKILL while every writer is mid-batch.
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
		}
	}
	cmd.Wait()
	if acks < 200 {
		t.Fatalf("child stopped after %d acks", acks)
	}
	s, err := sqlitestore.Open(dir, sqlitestore.Options{})
	if err != nil {
		t.Fatalf("reopen after kill -9: %v", err)
	}
	defer s.Close()
	ctx := context.Background()
	total, err := s.CountEvents(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for w := 0; w < killWriters; w++ {
		want += acked[w] + 1
		// Every acknowledged event, exactly once.
		q := store.EventQuery{Filter: &quiltv1.EventFilter{User: fmt.Sprint("u", w)}, OldestFirst: true, Limit: store.MaxLimit}
		next := 0
		for {
			p, err := s.QueryEvents(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range p.Events {
				if wantID := fmt.Sprintf("w%d-%08d", w, next); e.GetId() != wantID {
					t.Fatalf("writer %d: event %d is %s, want %s", w, next, e.GetId(), wantID)
				}
				next++
			}
			if p.NextPageToken == "" {
				break
			}
			q.PageToken = p.NextPageToken
		}
		if next <= acked[w] {
			t.Errorf("writer %d: %d events stored, but %d were acknowledged", w, next, acked[w]+1)
		}
		// A replay of the acknowledged events stores nothing.
		evs := []*quiltv1.Event{killEvent(w, 0), killEvent(w, acked[w])}
		r, err := s.InsertEvents(ctx, "src", evs, nil)
		if err != nil || r.Stored != 0 {
			t.Errorf("writer %d: replay after restart: %+v, %v", w, r, err)
		}
	}
	t.Logf("acknowledged %d events in %d batches before kill -9; %d stored (unacknowledged commits may add some)", want, acks, total)
	if total < int64(want) {
		t.Errorf("%d events stored, %d acknowledged", total, want)
	}
}
