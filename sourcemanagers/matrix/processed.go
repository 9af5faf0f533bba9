package matrix

import "time"

// processed is the driver's local record of handled Matrix events (seed
// 002): "room id 0xff event id -> timestamp" for the check, and the same
// keys in time order for cleanup by time range. The query master's store is
// the durable record (it drops a stored (source, event id) pair a second
// time); this set exists so that an event the homeserver sends again, in the
// same process, never reaches the runtime's user and channel maps twice.
//
// Not safe for concurrent use: only the sync loop touches it.
type processed struct {
	seen  map[string]time.Time
	order []stamped // ascending by at: the time index of seed 002
}

type stamped struct {
	at  time.Time
	key string
}

func newProcessed() *processed { return &processed{seen: map[string]time.Time{}} }

func processedKey(room, eventID string) string { return room + "\xff" + eventID }

// add records (room, eventID) as processed at now and reports whether it
// was new. Check and record are one step, so nothing can handle an event
// between "not seen" and "recorded".
func (p *processed) add(room, eventID string, now time.Time) bool {
	k := processedKey(room, eventID)
	if _, ok := p.seen[k]; ok {
		return false
	}
	p.seen[k] = now
	// The sync loop's clock can step back (NTP, a test's fake clock); keep
	// the index sorted so pruning by range stays a prefix cut.
	if n := len(p.order); n > 0 && now.Before(p.order[n-1].at) {
		now = p.order[n-1].at
	}
	p.order = append(p.order, stamped{at: now, key: k})
	return true
}

func (p *processed) has(room, eventID string) bool {
	_, ok := p.seen[processedKey(room, eventID)]
	return ok
}

// prune forgets every id recorded before cutoff and returns how many.
func (p *processed) prune(cutoff time.Time) int {
	i := 0
	for i < len(p.order) && p.order[i].at.Before(cutoff) {
		delete(p.seen, p.order[i].key)
		i++
	}
	if i > 0 {
		// Copy so the dropped prefix's backing array can be collected.
		p.order = append([]stamped(nil), p.order[i:]...)
	}
	return i
}

func (p *processed) len() int { return len(p.seen) }
