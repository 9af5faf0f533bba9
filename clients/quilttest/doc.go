// Package quilttest is the language of quilt's cluster test cases and the
// runner behind `quiltctl test`: small line-based scripts that act on the
// live cluster through the client library, wait for the events that
// follow, query, and assert on the rows. Files matching the [testing]
// includes globs (default *_testcase.quilt) in [testing] dir (default
// $QUILT_CFG/tests) are the suite; with [testing] sleep > 0 quiltctl
// repeats it as a canary.
//
//	# irc_testcase.quilt
//	name   IRC round trip
//	use    irc                           # the source; its only server
//	act    send #quilt "quilt canary ${RUN}"
//	expect event kind=message channel=#quilt text~"canary ${RUN}" within 10s
//	query  members channel=#quilt
//	assert rows >= 1
//	assert row self=true
//	query  events text="canary ${RUN}" since=case
//	assert rows == 1 within 5s
//	wait   1s
//
// A case for a protocol that not every cluster runs starts with `require`,
// so a cluster without that source reports it skipped rather than failed:
//
//	# matrix_testcase.quilt
//	name    Matrix round trip
//	require matrix                       # skip unless the source is known
//	use     matrix
//	act     send #quilt:localhost "quilt canary ${RUN}"
//	expect  event kind=message self=true text="quilt canary ${RUN}"
//	query   members channel=#quilt:localhost
//	assert  row self=true within 20s
//
// # Syntax
//
// One step per line; blank lines are ignored. A line starting with #, or a
// # after a blank and followed by a blank or the end of the line, starts a
// comment (so #quilt is a channel). Words are separated by blanks; double
// quotes group words and take the escapes \" \\ \n \t. Durations are Go
// durations (500ms, 10s, 2m) or bare seconds.
//
// ${NAME} is replaced in every value: ${RUN} is an id unique to this run of
// the case (use it in the text you send so a run never matches the events
// of an earlier one), ${CASE} the case name, ${SOURCE} and ${SERVER} what
// `use` chose, and any NAME given by `set`. Inside a ~ pattern a variable's
// value is matched literally.
//
// # Steps
//
//	name TEXT               the case name (default: the file name without
//	                        _testcase and its suffix); at most once
//	use SOURCE[/SERVER]     the source (and server) that act, expect and query
//	                        use by default; without SERVER, a source with a
//	                        single server uses that one
//	require SOURCE[/SERVER] skip the case (not a failure) unless the query
//	                        master knows the source, attached or not, and
//	                        the server when named: a case for a protocol the
//	                        cluster does not run. Only name, use, set,
//	                        timeout and other requires may come before it,
//	                        so a skipped case has done nothing. A known
//	                        source that is detached is not skipped: the
//	                        steps after it fail
//	set NAME VALUE          define ${NAME}
//	timeout DURATION        default `within` of expect steps (10s)
//	act send TARGET TEXT [style=message|notice|emote]
//	act join CHANNEL [key=KEY]
//	act part CHANNEL [REASON]
//	act kick CHANNEL USER [REASON]
//	act topic CHANNEL TEXT
//	act raw LINE            a protocol line as is
//	act reconnect
//	                        every act takes source=, server= and timeout=;
//	                        it fails unless the source manager reports success
//	expect event COND... [within DURATION]
//	                        wait for an event matching every condition among
//	                        those stored since the case started and not
//	                        taken by an earlier expect; it takes it
//	expect no event COND... within DURATION
//	                        fail if such an event arrives within DURATION
//	query KIND [PARAM=VALUE...]
//	                        run a query: presence, members, channels,
//	                        servers (live), events, lastseen (history),
//	                        sources. Params: source, server, channel, user,
//	                        kind (comma-separated event kinds), text (text~RE
//	                        for a regexp), since/until (`case`: when the
//	                        case started; a duration ago: 10m; RFC 3339),
//	                        limit, oldest=true. source=* asks every source.
//	                        A live answer missing some source fails the step
//	                        (or, when an `assert ... within` follows, that
//	                        assert, which re-runs the query meanwhile).
//	query pattern NAME [VAR=VALUE...]
//	                        run a configured pattern
//	assert rows OP N [within DURATION]
//	                        OP: == != < <= > >= (spaces around it)
//	assert row COND... [within DURATION]       some row matches
//	assert no row COND... [within DURATION]    no row matches
//	assert all rows COND... [within DURATION]  every row matches
//	                        asserts look at the last query's answer; with
//	                        within, the query is re-run until the assertion
//	                        holds or the time is up
//	wait DURATION           sleep
//
// A condition is FIELD OP VALUE with no blanks around OP: = (equal), !=,
// ~ (RE2 regexp, unanchored), !~, and > >= < <= comparing numbers. A field
// with several values (a user's four names, a source's servers) matches =
// and ~ when any value does, != and !~ when none does. expect steps add
// source= and server= from `use` unless they name their own (source=*:
// any).
//
// Fields of events (expect, query events): id source server protocol kind
// (message, notice, action, join, part, quit, kick, nick, topic, members,
// connected, ...) user (any of the four names) nick (transient name) self
// channel private target (the target user's names) text raw topic members
// (count) tags.NAME. Rows of presence and members: source server channel
// user nick self modes. channels: source server channel topic members.
// servers: source server state (connected, connecting, disconnected,
// disabled, failed) enabled address channels users error user nick (the
// bot). lastseen: source server channel user nick kind time text (the last
// message). sources: source protocol version node attached health server
// events.
//
// # Running
//
// The first failing step fails the case and skips the rest; a `require`
// that is not met skips the case with its reason. Each step prints ✓, ✗ or
// - (skipped) with its time, each case a PASS, FAIL or SKIP line, and each
// round ends with the line "N passed, N failed", or "N passed, N failed, N
// skipped" when a case was skipped. Skipped cases are not failures.
// Report.WriteJUnit writes JUnit XML (a skipped case as <skipped>).
package quilttest
