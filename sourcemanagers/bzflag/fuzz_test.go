package bzflag

import (
	"bytes"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

// FuzzInput feeds arbitrary server bytes after a valid join: the session
// must not panic, every event must marshal (protobuf strings are UTF-8)
// and actions must keep working.
func FuzzInput(f *testing.F) {
	f.Add(chat(0, allPlayers, 0, "hello"), 3)
	f.Add(bytes.Join([][]byte{addPlayer(1, 2, "bob"), playerInfo(1, 3), removePlayer(1)}, nil), 1)
	f.Add(frame(msgReject, []byte{0, 7, 'x'}), 2)
	f.Add([]byte{0xff, 0xff, 'm', 'g', 1, 2}, 1)
	f.Add(frame(msgMessage, []byte{0, 254, 0, 0xe9, 0xff, 0xfe}), 5)
	f.Add(frame(msgPlayerInfo, []byte{200, 0}), 1)
	f.Fuzz(func(t *testing.T, data []byte, chunk int) {
		s := NewSession(runtime.SessionConfig{Source: "fuzz"}, Settings{Callsign: "quilt", Team: observerTeam})
		now := t0
		s.Start(now)
		s.Input(now, bytes.Join([][]byte{hello(myID), accept, addPlayer(0, 1, "alice"), addPlayer(myID, observerTeam, "quilt"), playerInfo(0, 0, myID, 0)}, nil))
		if chunk <= 0 {
			chunk = 1
		}
		check := func(o runtime.Output) {
			for _, e := range o.Events {
				if _, err := proto.Marshal(e); err != nil {
					t.Fatalf("event does not marshal: %v: %v", err, e)
				}
				if !utf8.ValidString(e.Text) {
					t.Fatalf("invalid text %q", e.Text)
				}
			}
		}
		for len(data) > 0 {
			n := min(chunk, len(data))
			check(s.Input(now, data[:n]))
			data = data[n:]
			now = now.Add(time.Second)
			check(s.Tick(now))
		}
		o, _ := s.Do(now, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: GameChannel, Text: "still alive"})
		check(o)
	})
}
