package xmpp

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
)

// XML namespaces the driver reads or writes.
const (
	nsClient  = "jabber:client"
	nsMUC     = "http://jabber.org/protocol/muc"
	nsMUCUser = "http://jabber.org/protocol/muc#user"
	nsMUCAdm  = "http://jabber.org/protocol/muc#admin"
	nsSID     = "urn:xmpp:sid:0"
	nsDelay   = "urn:xmpp:delay"
	nsNick    = "http://jabber.org/protocol/nick"
	nsPing    = "urn:xmpp:ping"
	nsStanzas = "urn:ietf:params:xml:ns:xmpp-stanzas"
)

// stanza is an inbound <message/> or <presence/>, the parts quilt uses.
// Unknown children are ignored by encoding/xml.
type stanza struct {
	XMLName xml.Name
	From    string `xml:"from,attr"`
	To      string `xml:"to,attr"`
	ID      string `xml:"id,attr"`
	Type    string `xml:"type,attr"`

	// message
	Bodies   []string  `xml:"body"`
	Subject  *string   `xml:"subject"`
	StanzaID []sidElem `xml:"urn:xmpp:sid:0 stanza-id"`
	OriginID *sidElem  `xml:"urn:xmpp:sid:0 origin-id"`
	Delay    *struct {
		Stamp string `xml:"stamp,attr"`
	} `xml:"urn:xmpp:delay delay"`
	Nick string `xml:"http://jabber.org/protocol/nick nick"`

	// presence
	Show   string `xml:"show"`
	Status string `xml:"status"`

	MUC   *mucUser   `xml:"http://jabber.org/protocol/muc#user x"`
	Error *stanzaErr `xml:"error"`
}

type sidElem struct {
	ID string `xml:"id,attr"`
	By string `xml:"by,attr"`
}

type mucUser struct {
	Items    []mucItem `xml:"item"`
	Statuses []struct {
		Code int `xml:"code,attr"`
	} `xml:"status"`
}

type mucItem struct {
	Affiliation string `xml:"affiliation,attr"`
	Role        string `xml:"role,attr"`
	JID         string `xml:"jid,attr"`
	Nick        string `xml:"nick,attr"`
	Actor       *struct {
		Nick string `xml:"nick,attr"`
		JID  string `xml:"jid,attr"`
	} `xml:"actor"`
	Reason string `xml:"reason"`
}

// stanzaErr is an RFC 6120 stanza error: its condition is the name of the
// child element in the stanzas namespace.
type stanzaErr struct {
	Type  string `xml:"type,attr"`
	Inner []struct {
		XMLName xml.Name
		Text    string `xml:",chardata"`
	} `xml:",any"`
}

// Condition is "not-authorized", "conflict", ... plus the text when given.
func (e *stanzaErr) Condition() string {
	if e == nil {
		return "unknown error"
	}
	cond, text := "", ""
	for _, c := range e.Inner {
		switch {
		case c.XMLName.Local == "text":
			text = strings.TrimSpace(c.Text)
		case cond == "":
			cond = c.XMLName.Local
		}
	}
	if cond == "" {
		cond = "undefined-condition"
	}
	if text != "" {
		return cond + " (" + text + ")"
	}
	return cond
}

func (st *stanza) body() (string, bool) {
	if len(st.Bodies) == 0 {
		return "", false
	}
	return st.Bodies[0], true
}

func (st *stanza) hasStatus(code int) bool {
	if st.MUC == nil {
		return false
	}
	for _, s := range st.MUC.Statuses {
		if s.Code == code {
			return true
		}
	}
	return false
}

func (st *stanza) item() mucItem {
	if st.MUC == nil || len(st.MUC.Items) == 0 {
		return mucItem{}
	}
	return st.MUC.Items[0]
}

var errNotStanza = errors.New("xmpp: not a message or presence stanza")

// parseStanza decodes one <message/> or <presence/> element from raw XML
// (tests, fuzzing and the benchmark feed bytes; the client decodes from the
// session's token stream with decodeStanza).
func parseStanza(b []byte) (*stanza, error) {
	d := xml.NewDecoder(bytes.NewReader(b))
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, fmt.Errorf("xmpp: stanza: %w", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			return decodeStanza(d, &se)
		}
	}
}

func decodeStanza(d *xml.Decoder, start *xml.StartElement) (*stanza, error) {
	if start.Name.Local != "message" && start.Name.Local != "presence" {
		return nil, errNotStanza
	}
	st := &stanza{}
	if err := d.DecodeElement(st, start); err != nil {
		return nil, fmt.Errorf("xmpp: %s stanza: %w", start.Name.Local, err)
	}
	return st, nil
}

// splitJID splits "local@domain/resource" without validating it (inbound
// addresses come from the server, which validated them). The resource may
// contain '/' and '@'.
func splitJID(s string) (bare, resource string) {
	if i := strings.IndexByte(s, '/'); i >= 0 {
		return s[:i], s[i+1:]
	}
	return s, ""
}

func bareJID(s string) string {
	b, _ := splitJID(s)
	return b
}

func localpart(s string) string {
	b := bareJID(s)
	if i := strings.IndexByte(b, '@'); i >= 0 {
		return b[:i]
	}
	return b
}
