package bzflag

import (
	"encoding/binary"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Wire constants of bzfs 2.4 (protocol "BZFS0221"), checked against a real
// bzfs 2.4.26: the hello, message codes, field widths and the reserved
// player ids chat is addressed to.
const (
	// clientHello opens every connection; the server answers with
	// serverMagic, its 4-byte protocol version and one byte: our player id.
	clientHello     = "BZFLAG\r\n\r\n"
	serverMagic     = "BZFS"
	protocolVersion = "0221"
	helloLen        = 9

	// header: uint16 payload length, uint16 code, both big-endian.
	headerLen = 4

	callsignLen = 32
	mottoLen    = 128
	tokenLen    = 22
	versionLen  = 60
	// messageLen bounds chat text, terminating NUL included.
	messageLen = 128
	// maxChatBytes is the text that fits one MsgMessage.
	maxChatBytes = messageLen - 1
)

// Message codes are two ASCII letters read as a big-endian uint16.
const (
	msgAccept       = 0x6163 // "ac": MsgEnter accepted; payload: our id
	msgAddPlayer    = 0x6170 // "ap": a player entered (or was there before us)
	msgEnter        = 0x656e // "en": join as type/team/callsign/motto/token/version
	msgExit         = 0x6578 // "ex": we leave
	msgGameTime     = 0x6774 // "gt": periodic server clock
	msgLagPing      = 0x7069 // "pi": server round-trip probe; echoed back
	msgMessage      = 0x6d67 // "mg": chat, both ways
	msgPlayerInfo   = 0x7062 // "pb": registered/verified/admin bits per player
	msgReject       = 0x726a // "rj": MsgEnter refused; uint16 code + reason
	msgRemovePlayer = 0x7270 // "rp": a player left
	msgSetVar       = 0x7376 // "sv": game variables after MsgAccept
	msgSuperKill    = 0x736b // "sk": the server drops us (kick, ban, shutdown)
	msgTeamUpdate   = 0x7475 // "tu": team sizes and scores
)

// Reserved player ids: chat sources and destinations that are not players.
const (
	lastRealPlayer = 243 // ids 0..243 are players
	teamBase       = 251 // team t is addressed as teamBase - t (244..251)
	adminPlayers   = 252
	serverPlayer   = 253
	allPlayers     = 254
	noPlayer       = 255
)

// Player attribute bits of MsgPlayerInfo.
const (
	attrRegistered = 1 << 0
	attrVerified   = 1 << 1
	attrAdmin      = 1 << 2
)

// message types of a server MsgMessage.
const (
	chatMessage   = 0
	actionMessage = 1 // "/me ..." emotes
)

// teamNames are indexed by bzfs TeamColor.
var teamNames = [...]string{"rogue", "red", "green", "blue", "purple", "observer", "rabbit", "hunter"}

const observerTeam = 5

// TeamCode maps a team name from the [server] section to its TeamColor.
// "hunted" is the rabbit: the one player every hunter chases.
func TeamCode(name string) (int16, bool) {
	name = strings.ToLower(strings.TrimSpace(name))
	if name == "hunted" {
		name = "rabbit"
	}
	for i, n := range teamNames {
		if n == name {
			return int16(i), true
		}
	}
	return 0, false
}

// teamName names a TeamColor; unknown colors get a stable "teamN".
func teamName(t int) string {
	if t >= 0 && t < len(teamNames) {
		return teamNames[t]
	}
	return "team" + strconv.Itoa(t)
}

// frame builds one message: header then payload.
func frame(code uint16, payload []byte) []byte {
	b := make([]byte, headerLen+len(payload))
	binary.BigEndian.PutUint16(b[0:], uint16(len(payload)))
	binary.BigEndian.PutUint16(b[2:], code)
	copy(b[headerLen:], payload)
	return b
}

// putFixed writes s NUL-padded into a field of width n, always leaving
// room for the terminating NUL bzfs expects.
func putFixed(dst []byte, s string) {
	n := len(dst) - 1
	if len(s) > n {
		s = truncUTF8(s, n)
	}
	copy(dst, s)
}

// enterPayload is MsgEnter: uint16 player type (0: tank, the only type a
// human client sends), int16 team, then callsign, motto, token and client
// version as fixed NUL-padded fields.
func enterPayload(team int16, callsign, motto, token, version string) []byte {
	p := make([]byte, 4+callsignLen+mottoLen+tokenLen+versionLen)
	binary.BigEndian.PutUint16(p[0:], 0)
	binary.BigEndian.PutUint16(p[2:], uint16(team))
	off := 4
	putFixed(p[off:off+callsignLen], callsign)
	off += callsignLen
	putFixed(p[off:off+mottoLen], motto)
	off += mottoLen
	putFixed(p[off:off+tokenLen], token)
	off += tokenLen
	putFixed(p[off:off+versionLen], version)
	return p
}

// chatPayload is a client MsgMessage: destination id and NUL-terminated
// text (the server knows who we are).
func chatPayload(to byte, text string) []byte {
	p := make([]byte, 0, 2+len(text))
	p = append(p, to)
	p = append(p, text...)
	return append(p, 0)
}

// cString reads a NUL-terminated (or field-ending) string and makes it
// valid UTF-8: bzfs passes client bytes through unchecked, and a protobuf
// string must be UTF-8, so bytes that are not are read as Latin-1.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			b = b[:i]
			break
		}
	}
	return text(b)
}

func text(b []byte) string {
	ascii := true
	for _, c := range b {
		if c >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii || utf8.Valid(b) {
		return string(b)
	}
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return string(r)
}

// stripANSI removes the colour escapes bzfs puts in server messages
// (ESC [ ... m); they mean nothing outside a BZFlag client.
func stripANSI(s string) string {
	if strings.IndexByte(s, 0x1b) < 0 {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == 0x1b {
			j := i + 1
			if j < len(s) && s[j] == '[' {
				j++
				for j < len(s) && (s[j] < 0x40 || s[j] > 0x7e) {
					j++
				}
			}
			i = j
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// truncUTF8 cuts s to at most n bytes without splitting a rune.
func truncUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// splitChat cuts one line of text into pieces of at most maxChatBytes,
// preferring to break at a space.
func splitChat(s string) []string {
	var out []string
	for len(s) > maxChatBytes {
		cut := truncUTF8(s, maxChatBytes)
		if i := strings.LastIndexByte(cut, ' '); i > maxChatBytes/2 {
			cut = cut[:i]
			out = append(out, cut)
			s = s[i+1:]
			continue
		}
		out = append(out, cut)
		s = s[len(cut):]
	}
	if s != "" {
		out = append(out, s)
	}
	return out
}

// chatLines turns action text into sendable lines: split at line breaks,
// control characters dropped (bzfs would show them as garbage), empty
// lines skipped.
func chatLines(s string) []string {
	var out []string
	for _, l := range strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' }) {
		l = strings.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f {
				return -1
			}
			return r
		}, l)
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}
