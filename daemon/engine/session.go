package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/protocol"
)

// session is one connected MQTT session: everything in it dies with the
// connection. What outlives it is in the journal (the rotation's phase) and
// in Engine.rot (the staged key).
type session struct {
	e          *Engine
	conn       Conn
	cred       *Credential // the credential connected with
	in         chan message
	subscribed map[string]bool
	startToken string           // only the reply to the latest start-next counts
	retryAt    <-chan time.Time // when to ask again for an unanswered reply
	unanswered int              // get/ack requests sent on this session since its last reply
	// docPublish is the job document topic last published to on this
	// session while its reply is awaited ("" once answered): a broker that
	// closes the connection then refused the publish (wedge.go).
	docPublish    string
	describeToken string // only the reply to the latest DescribeJobExecution counts
	// noJob: the Jobs API said no execution is pending (the safety net
	// may ask for one); safetyAt is when to look at it again.
	noJob    bool
	safetyAt <-chan time.Time
}

// runSession drives one connected session until it ends.
func (e *Engine) runSession(ctx context.Context, conn Conn, c *Credential) error {
	s := &session{e: e, conn: conn, cred: c, in: make(chan message, 64), subscribed: map[string]bool{}}
	return s.run(ctx)
}

func (s *session) run(ctx context.Context) error {
	e := s.e
	e.setConn("connected", s.cred)
	e.log.Info("connected", "generation", s.cred.Generation, "certificateId", s.cred.CertificateID())
	for _, f := range s.jobsSubscriptions() {
		if err := s.subscribe(ctx, f); err != nil {
			if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
				// no SUBACK within the reply timeout: a slow or stuck
				// broker, not a verdict on the credential
				return err
			}
			return &notEstablished{err}
		}
	}
	s.safetyStart()
	if err := s.resume(ctx); err != nil {
		return err
	}
	if err := s.startNext(ctx); err != nil {
		return err
	}
	for {
		var err error
		e.tick()
		if e.applyReload() {
			return errReconfigured
		}
		select {
		case <-e.beatC:
			e.beatC = e.clock.After(BeatInterval)
			err = s.clockOK()
		case <-e.reload.wake: // applied above, once no rotation runs
		case <-ctx.Done():
			return ctx.Err()
		case <-s.conn.Done():
			err := fmt.Errorf("connection lost: %v", s.conn.Err())
			if s.docPublish != "" {
				return s.publishLost(s.docPublish, err)
			}
			return err
		case m := <-s.in:
			err = s.handle(ctx, m)
		case r := <-e.keygenDone:
			err = s.onKeygen(ctx, r)
		case <-e.rotateNow:
			err = s.startNext(ctx)
		case <-s.retryAt:
			s.retryAt = nil
			err = s.retry(ctx)
		case <-s.safetyAt:
			s.safetyAt = nil
			err = s.checkSafetyNet(ctx)
		}
		if err != nil {
			return err
		}
	}
}

func (s *session) subscribe(ctx context.Context, filter string) error {
	if s.subscribed[filter] {
		return nil
	}
	in, done := s.in, s.conn.Done()
	// paho runs each handler in its own goroutine (order does not matter):
	// a handler waiting here for a busy engine blocks nothing else.
	wctx, cancel := s.netWait(ctx)
	defer cancel()
	err := s.conn.Subscribe(wctx, filter, func(topic string, payload []byte) {
		select {
		case in <- message{topic, payload}:
		case <-done:
		}
	})
	s.e.tick()
	if err != nil {
		return err
	}
	s.subscribed[filter] = true
	return nil
}

// netWait bounds a wait for the broker (SUBACK, PUBACK) by the reply
// timeout: a broker that stops answering on an open connection ends the
// session (and the engine reconnects) instead of holding the engine loop.
// It is a network deadline, handed to the MQTT client, so real time.
func (s *session) netWait(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.e.cfg.ReplyTimeout)
}

// publish publishes at QoS 1 and waits for the PUBACK, at most the reply
// timeout.
func (s *session) publish(ctx context.Context, topic string, payload []byte) error {
	wctx, cancel := s.netWait(ctx)
	defer cancel()
	err := s.conn.Publish(wctx, topic, payload)
	s.e.tick()
	return err
}

func (s *session) publishJSON(ctx context.Context, topic string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.publish(ctx, topic, b)
}

// handle routes a message: the Jobs API's, then the rotation's replies.
func (s *session) handle(ctx context.Context, m message) error {
	if handled, err := s.handleJobs(ctx, m); handled {
		return err
	}
	if suffix, ok := replySuffix(protocol.RotateTopic(s.e.cfg.Thing)+"/+", m.topic); ok {
		return s.onRotateReply(ctx, suffix, m.payload)
	}
	j := s.e.journal.Current()
	if j.Doc == nil {
		return nil
	}
	get := j.Doc.Get.Expand(s.e.cfg.Thing)
	ack := j.Doc.Ack.Expand(s.e.cfg.Thing)
	if suffix, ok := replySuffix(get.Subscribe, m.topic); ok {
		return s.onGetReply(ctx, suffix, m.payload)
	}
	if suffix, ok := replySuffix(ack.Subscribe, m.topic); ok {
		return s.onAckReply(ctx, suffix, m.payload)
	}
	return nil
}

// maxUnanswered is how many requests (get, ack) a session may leave without
// any reply before the engine ends it and reconnects: a broker that
// acknowledges publishes but delivers nothing to a connection (subscriptions
// lost on its side) is only cured by a new session.
const maxUnanswered = 2

// errNoReply ends a session whose requests go unanswered.
var errNoReply = errors.New("no reply to the last requests on this session")

// asked arms the retry of a request just sent.
func (s *session) asked(what string) {
	s.unanswered++
	d := s.e.retryDelay()
	s.e.log.Debug("waiting for a reply", "request", what, "sent", s.unanswered, "retryIn", d.Round(time.Millisecond))
	s.retryAt = s.e.clock.After(d)
}

// answered notes a reply on this session.
func (s *session) answered() { s.unanswered, s.docPublish = 0, "" }

// retryDelay is how long to wait for a reply before asking again: the reply
// timeout plus a jittered backoff that starts at the reply timeout and
// doubles up to Backoff.Max (no fixed retry intervals). Starting the backoff
// at the reply timeout, not at Backoff.Initial, matters in a fleet storm:
// a request that waits minutes in the cloud's queue would otherwise be
// asked again about every reply timeout, and each repeat is one more event
// in the same queue (bench/README.md, "Per-function queues").
func (e *Engine) retryDelay() time.Duration {
	b := e.cfg.Backoff
	b.Initial = min(max(b.Initial, e.cfg.ReplyTimeout), b.Max)
	d := e.cfg.ReplyTimeout + b.Delay(e.rot.replyTries)
	e.rot.replyTries++
	return d
}

// retry asks again for the reply the rotation waits for, or ends a session
// on which requests go unanswered.
func (s *session) retry(ctx context.Context) error {
	j := s.e.journal.Current()
	var what string
	switch {
	case j.Phase == journal.KeyStaged && s.e.rot.staged != nil:
		what = "certificate request"
	case j.Phase == journal.Switched && s.cred.Generation == j.Generation:
		what = "acknowledgement"
	default:
		return nil
	}
	if s.unanswered >= maxUnanswered {
		s.e.log.Warn("no reply on this session; reconnecting", "request", what, "unanswered", s.unanswered)
		return fmt.Errorf("%w (%d %s requests, reply timeout %s)", errNoReply, s.unanswered, what, s.e.cfg.ReplyTimeout)
	}
	s.e.log.Info("no reply; asking again", "request", what, "unanswered", s.unanswered)
	if what == "acknowledgement" {
		return s.sendAck(ctx)
	}
	return s.sendGet(ctx)
}
