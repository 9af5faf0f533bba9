package xmpp

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
)

const nsBind = "urn:ietf:params:xml:ns:xmpp-bind"

// bindFeature binds the configured resource. With mellium's BindResource,
// which asks for the resource of the session's local address, prosody 0.12
// always assigned a random resource (seen in the end-to-end test), so the
// resource key had no effect; this sends the configured one explicitly.
func bindFeature(resource string) xmpp.StreamFeature {
	return xmpp.StreamFeature{
		Name:       xml.Name{Space: nsBind, Local: "bind"},
		Necessary:  xmpp.Authn,
		Prohibited: xmpp.Ready,
		List: func(context.Context, xmlstream.TokenWriter, xml.StartElement) (bool, error) {
			return true, errors.New("xmpp: bind: client side only")
		},
		Parse: func(_ context.Context, d *xml.Decoder, _ *xml.StartElement) (bool, interface{}, error) {
			return true, nil, d.Skip()
		},
		Negotiate: func(_ context.Context, session *xmpp.Session, _ interface{}) (xmpp.SessionState, io.ReadWriter, error) {
			id := newID()
			// Tokens written by hand: tokens decoded from marshalled XML
			// carry each xmlns twice (as namespace and as attribute), which
			// the server rejects as not well-formed.
			iq := xml.StartElement{Name: xml.Name{Space: nsClient, Local: "iq"},
				Attr: []xml.Attr{{Name: xml.Name{Local: "id"}, Value: id}, {Name: xml.Name{Local: "type"}, Value: "set"}}}
			bind := xml.StartElement{Name: xml.Name{Space: nsBind, Local: "bind"}}
			toks := []xml.Token{iq, bind}
			if resource != "" {
				res := xml.StartElement{Name: xml.Name{Local: "resource"}}
				toks = append(toks, res, xml.CharData(resource), res.End())
			}
			toks = append(toks, bind.End(), iq.End())
			w := session.TokenWriter()
			defer w.Close()
			for _, tok := range toks {
				if err := w.EncodeToken(tok); err != nil {
					return 0, nil, err
				}
			}
			if err := w.Flush(); err != nil {
				return 0, nil, err
			}
			r := session.TokenReader()
			defer r.Close()
			d := xml.NewTokenDecoder(r)
			var resp struct {
				ID   string     `xml:"id,attr"`
				Type string     `xml:"type,attr"`
				JID  string     `xml:"urn:ietf:params:xml:ns:xmpp-bind bind>jid"`
				Err  *stanzaErr `xml:"error"`
			}
			for {
				tok, err := d.Token()
				if err != nil {
					return 0, nil, fmt.Errorf("xmpp: bind: %w", err)
				}
				if start, ok := tok.(xml.StartElement); ok {
					if err := d.DecodeElement(&resp, &start); err != nil {
						return 0, nil, fmt.Errorf("xmpp: bind: %w", err)
					}
					break
				}
			}
			switch {
			case resp.ID != id:
				return 0, nil, fmt.Errorf("xmpp: bind: answer to request %q, want %q", resp.ID, id)
			case resp.Type == "error":
				return 0, nil, fmt.Errorf("xmpp: bind resource %q refused: %s", resource, resp.Err.Condition())
			case resp.Type != "result":
				return 0, nil, fmt.Errorf("xmpp: bind: unexpected answer type %q", resp.Type)
			}
			j, err := jid.Parse(resp.JID)
			if err != nil {
				return 0, nil, fmt.Errorf("xmpp: bind: server assigned an invalid JID %q: %w", resp.JID, err)
			}
			session.UpdateAddr(j)
			return xmpp.Ready, nil, nil
		},
	}
}
