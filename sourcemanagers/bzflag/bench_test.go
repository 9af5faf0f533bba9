package bzflag

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/quilt/quilt/sourcemanagers/runtime"
)

// BenchmarkInputChat measures the inbound path: MsgMessage frames from a
// 20-player game, in 4 KiB reads as the runtime delivers them, parsed into
// GAME_CHAT events.
func BenchmarkInputChat(b *testing.B) {
	s := NewSession(runtime.SessionConfig{Source: "bench"}, Settings{Callsign: "quilt", Team: observerTeam})
	s.Start(t0)
	join := [][]byte{hello(myID), accept}
	for i := 0; i < 20; i++ {
		if i != myID {
			join = append(join, addPlayer(byte(i), i%5, fmt.Sprintf("player%02d", i)))
		}
	}
	join = append(join, addPlayer(myID, observerTeam, "quilt"), playerInfo(0, 3, myID, 0))
	s.Input(t0, bytes.Join(join, nil))
	if !s.Joined() {
		b.Fatal("not joined")
	}
	var frames [][]byte
	for i := 0; i < 64; i++ {
		to := byte(allPlayers)
		if i%4 == 0 {
			to = byte(teamBase - i%5)
		}
		frames = append(frames, chat(byte(i%20), to, 0, fmt.Sprintf("chat line %d with some ordinary game talk, gg", i)))
	}
	stream := bytes.Join(frames, nil)
	const read = 4096
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	b.ResetTimer()
	events := 0
	for i := 0; i < b.N; i++ {
		for off := 0; off < len(stream); off += read {
			out := s.Input(t0, stream[off:min(off+read, len(stream))])
			events += len(out.Events)
		}
	}
	b.StopTimer()
	if events != b.N*len(frames) {
		b.Fatalf("%d events, want %d", events, b.N*len(frames))
	}
	b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "frames/s")
}
