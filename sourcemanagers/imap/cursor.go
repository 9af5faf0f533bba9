package imap

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// position is how far a mailbox has been handled: every mail with a UID up
// to uid under this uidValidity was emitted (or deliberately skipped).
type position struct {
	uidValidity uint32
	uid         uint32
}

func (p position) String() string {
	return strconv.FormatUint(uint64(p.uidValidity), 10) + ":" + strconv.FormatUint(uint64(p.uid), 10)
}

// parsePosition reads a Cursor value "<uidvalidity>:<uid>".
func parsePosition(s string) (position, error) {
	v, u, ok := strings.Cut(s, ":")
	if !ok {
		return position{}, fmt.Errorf("cursor %q is not <uidvalidity>:<uid>", s)
	}
	vv, err1 := strconv.ParseUint(v, 10, 32)
	uu, err2 := strconv.ParseUint(u, 10, 32)
	if err1 != nil || err2 != nil || vv == 0 {
		return position{}, fmt.Errorf("cursor %q is not <uidvalidity>:<uid> (two unsigned 32-bit numbers, uidvalidity > 0)", s)
	}
	return position{uidValidity: uint32(vv), uid: uint32(uu)}, nil
}

// CursorName is the Cursor name of mailbox's position.
func CursorName(mailbox string) string { return CursorPrefix + mailbox }

// positions remembers the last position emitted per source, server and
// mailbox in this process. The runtime gives a reconnecting session the
// cursors of the last Welcome, older than what this process already
// emitted; without this memory every reconnect would fetch and emit again
// the mail of the process's whole life (the store would drop the copies,
// but only after they crossed the network twice).
var positions = struct {
	sync.Mutex
	m map[string]position
}{m: map[string]position{}}

func positionKey(source, server, mailbox string) string {
	return source + "\x00" + server + "\x00" + mailbox
}

func remember(key string, p position) {
	positions.Lock()
	positions.m[key] = p
	positions.Unlock()
}

func remembered(key string) (position, bool) {
	positions.Lock()
	defer positions.Unlock()
	p, ok := positions.m[key]
	return p, ok
}

// laterPosition picks where to resume between the stored cursor and this
// process's memory: within one UIDVALIDITY the higher UID; across two, the
// memory, which is the more recent observation of the server.
func laterPosition(stored position, haveStored bool, mem position, haveMem bool) (position, bool) {
	switch {
	case !haveMem:
		return stored, haveStored
	case !haveStored:
		return mem, true
	case stored.uidValidity == mem.uidValidity && stored.uid > mem.uid:
		return stored, true
	}
	return mem, true
}
