package irc

import "strings"

// casemapping folds nicks and channel names the way the server compares them
// (ISUPPORT CASEMAPPING). rfc1459 is the default: besides ASCII letters,
// []\~ are the upper case of {}|^.
type casemapping int

const (
	caseRFC1459 casemapping = iota
	caseStrictRFC1459
	caseASCII
)

func parseCasemapping(v string) casemapping {
	switch strings.ToLower(v) {
	case "ascii":
		return caseASCII
	case "strict-rfc1459":
		return caseStrictRFC1459
	default:
		return caseRFC1459
	}
}

func (c casemapping) fold(s string) string {
	// Fast path: most names are already lower case ASCII without specials.
	needs := false
	for i := 0; i < len(s); i++ {
		b := s[i]
		if (b >= 'A' && b <= 'Z') || (c != caseASCII && (b == '[' || b == ']' || b == '\\' || (c == caseRFC1459 && b == '~'))) {
			needs = true
			break
		}
	}
	if !needs {
		return s
	}
	out := []byte(s)
	for i, b := range out {
		switch {
		case b >= 'A' && b <= 'Z':
			out[i] = b + ('a' - 'A')
		case c == caseASCII:
		case b == '[':
			out[i] = '{'
		case b == ']':
			out[i] = '}'
		case b == '\\':
			out[i] = '|'
		case b == '~' && c == caseRFC1459:
			out[i] = '^'
		}
	}
	return string(out)
}
