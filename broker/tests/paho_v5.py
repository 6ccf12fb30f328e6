"""MQTT 5 semantics through firehose-broker with paho-mqtt's v5 client.

Driven by broker/tests/mqtt5_paho.rs:
    python3 paho_v5.py HOST PORT USER PASS
Checks, each printed as "ok <name>" (exit 1 with the reason otherwise):
QoS downgrade (publish 2 / subscribe 1 → 1, publish 1 / subscribe 2 → 1,
publish 2 / subscribe 2 → 2), retain handling 0/1/2, retain-as-published,
no-local, subscription identifiers (one copy, every id), properties kept
live and retained (user properties, content type, payload format,
correlation data, response topic), message expiry shortened on delivery,
the client's Receive Maximum and Maximum Packet Size, topic aliases both
ways, a will at QoS 2, session expiry changed at DISCONNECT, message expiry
of messages queued for an absent client.
Every wait is bounded.
"""
import queue
import sys
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
WAIT = 15
RUN = uuid.uuid4().hex[:8]


def fail(why):
    print("FAIL", why, flush=True)
    sys.exit(1)


class Client:
    """A v5 client whose messages and SUBACKs land in queues."""

    def __init__(self, name, login=False, props=None, manual_ack=False, will=None,
                 clean=True):
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{RUN}",
                             protocol=mqtt.MQTTv5, manual_ack=manual_ack)
        if login:
            self.c.username_pw_set(user, password)
        if will:
            self.c.will_set(*will)
        self.msgs = queue.Queue()
        self.acks = queue.Queue()
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        self.c.on_subscribe = lambda c, u, mid, codes, props: self.acks.put(codes)
        connected = queue.Queue()
        self.c.on_connect = lambda c, u, f, rc, p: connected.put((rc, f.session_present))
        self.c.connect(host, port, keepalive=30, properties=props, clean_start=clean)
        self.c.loop_start()
        rc, self.present = connected.get(timeout=WAIT)
        if rc != 0:
            fail(f"{name}: CONNACK {rc}")

    def sub(self, topic, qos=0, **opts):
        props = None
        if "sub_id" in opts:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = opts.pop("sub_id")
        self.c.subscribe(topic, options=SubscribeOptions(qos=qos, **opts), properties=props)
        return [int(c.value) for c in self.acks.get(timeout=WAIT)]

    def pub(self, topic, payload, qos=0, retain=False, props=None):
        self.c.publish(topic, payload, qos=qos, retain=retain, properties=props).wait_for_publish(WAIT)

    def get(self):
        return self.msgs.get(timeout=WAIT)

    def none_before(self, marker_topic):
        """True when the next message is the marker (nothing came before it)."""
        m = self.get()
        return m.topic == marker_topic, m


pub = Client("pub", login=True)
sub = Client("sub")

# QoS: the lower of publish and subscription.
t = f"v5/{RUN}/qos"
for sq, pq, want in [(1, 2, 1), (2, 1, 1), (2, 2, 2), (0, 2, 0)]:
    topic = f"{t}/{sq}{pq}"
    sub.sub(topic, qos=sq)
    pub.pub(topic, "q", qos=pq)
    m = sub.get()
    if m.qos != want:
        fail(f"QoS: subscribed {sq}, published {pq}: delivered at {m.qos}, want {want}")
print("ok qos", flush=True)

# Retain handling: 0 sends retained at every subscribe, 1 only for a new
# subscription, 2 never; a marker published after shows nothing came first.
t = f"v5/{RUN}/rh"
pub.pub(f"{t}/r", "kept", qos=1, retain=True)
for rh, first, again in [(0, True, True), (1, True, False), (2, False, False)]:
    c = Client(f"rh{rh}")
    for attempt, want in [(1, first), (2, again)]:
        c.sub(f"{t}/#", qos=1, retainHandling=rh)
        marker = f"{t}/marker{rh}{attempt}"
        pub.pub(marker, "m", qos=1)
        came_first, m = c.none_before(marker)
        got_retained = not came_first
        if got_retained:
            if m.topic != f"{t}/r" or not m.retain:
                fail(f"retain handling {rh}: unexpected {m.topic}")
            c.get()  # the marker
        if got_retained != want:
            fail(f"retain handling {rh}, subscribe #{attempt}: retained sent {got_retained}, want {want}")
print("ok retain-handling", flush=True)

# Retain-as-published: live retained publishes keep the flag only with it.
t = f"v5/{RUN}/rap"
rap = Client("rap")
rap.sub(f"{t}/#", qos=1, retainAsPublished=True, retainHandling=2)
plain = Client("plain")
plain.sub(f"{t}/#", qos=1, retainHandling=2)
pub.pub(f"{t}/x", "live", qos=1, retain=True)
if not rap.get().retain or plain.get().retain:
    fail("retain-as-published")
print("ok retain-as-published", flush=True)

# No-local: a client does not get its own publishes.
t = f"v5/{RUN}/nl"
pub.sub(f"{t}/#", qos=1, noLocal=True)
pub.pub(f"{t}/own", "own", qos=1)
other = Client("other", login=True)
other.pub(f"{t}/theirs", "theirs", qos=1)
m = pub.get()
if m.topic != f"{t}/theirs":
    fail(f"no-local: got {m.topic} first")
print("ok no-local", flush=True)

# Subscription identifiers: overlapping subscriptions, one copy, both ids.
t = f"v5/{RUN}/sid"
sid = Client("sid")
sid.sub(f"{t}/#", qos=1, sub_id=7)
sid.sub(f"{t}/+", qos=1, sub_id=9)
pub.pub(f"{t}/x", "x", qos=1)
m = sid.get()
ids = sorted(getattr(m.properties, "SubscriptionIdentifier", []))
if ids != [7, 9]:
    fail(f"subscription identifiers {ids}")
marker = f"{t}/end"
pub.pub(marker, "end", qos=1)
if sid.get().topic != marker:
    fail("a second copy for overlapping subscriptions")
print("ok subscription-identifiers", flush=True)

# Properties travel live and retained.
t = f"v5/{RUN}/props"
props = Properties(PacketTypes.PUBLISH)
props.UserProperty = [("origin", "gerrit"), ("run", RUN)]
props.ContentType = "application/json"
props.PayloadFormatIndicator = 1
props.CorrelationData = b"corr-1"
props.ResponseTopic = f"{t}/reply"
live = Client("live")
live.sub(f"{t}/#", qos=1)
pub.pub(f"{t}/p", '{"a":1}', qos=1, retain=True, props=props)
late = Client("late")
late.sub(f"{t}/#", qos=1)
for who, m in [("live", live.get()), ("retained", late.get())]:
    p = m.properties
    if (sorted(getattr(p, "UserProperty", [])) != sorted(props.UserProperty)
            or getattr(p, "ContentType", None) != "application/json"
            or getattr(p, "PayloadFormatIndicator", None) != 1
            or getattr(p, "CorrelationData", None) != b"corr-1"
            or getattr(p, "ResponseTopic", None) != f"{t}/reply"):
        fail(f"properties {who}: {p}")
print("ok properties", flush=True)

# Message expiry: what is left of the interval, not the original.
t = f"v5/{RUN}/exp"
props = Properties(PacketTypes.PUBLISH)
props.MessageExpiryInterval = 600
pub.pub(f"{t}/e", "e", qos=1, retain=True, props=props)


def wait_one_second_passed(name):
    """Waits for time to pass by an event, not a clock: a retained probe with
    a 1 s expiry, published now, until the broker no longer serves it."""
    probe = Properties(PacketTypes.PUBLISH)
    probe.MessageExpiryInterval = 1
    pt = f"v5/{RUN}/{name}-probe"
    pub.pub(f"{pt}/p", "p", qos=1, retain=True, props=probe)
    deadline = time.monotonic() + WAIT
    for n in range(1000):
        c = Client(f"{name}-probe{n}")
        c.sub(f"{pt}/#", qos=0)
        pub.pub(f"{pt}/marker", "m", qos=1)
        gone = c.get().topic == f"{pt}/marker"
        c.c.disconnect()
        if gone:
            return
        if time.monotonic() > deadline:
            fail("the 1 s probe never expired")
        time.sleep(0.1)


wait_one_second_passed("exp")
exp = Client("exp")
exp.sub(f"{t}/#", qos=1)
left = getattr(exp.get().properties, "MessageExpiryInterval", None)
if left is None or not 500 < left < 600:
    fail(f"message expiry left {left}")
print("ok message-expiry", flush=True)


def connect_props(**kw):
    p = Properties(PacketTypes.CONNECT)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def round_trip(c):
    """A SUBACK: whatever the broker had sent before it has been handled."""
    c.sub(f"v5/{RUN}/nothing/{uuid.uuid4().hex[:6]}", qos=0)


# Receive Maximum 2: at most two QoS 1 messages unacknowledged; each ack
# lets exactly one more come. (paho reads on while acks are held back.)
t = f"v5/{RUN}/rm"
rm = Client("rm", props=connect_props(ReceiveMaximum=2), manual_ack=True)
rm.sub(f"{t}/#", qos=1)
for i in range(5):
    pub.pub(f"{t}/x", f"m{i}", qos=1)
got = [rm.get(), rm.get()]
for expected in range(3, 6):
    round_trip(rm)
    if not rm.msgs.empty():
        fail(f"receive maximum: message {expected} came before an ack")
    rm.c.ack(got[-2].mid, 1)
    got.append(rm.get())
if [m.payload.decode() for m in got] != [f"m{i}" for i in range(5)]:
    fail(f"receive maximum: order {[m.payload for m in got]}")
for m in got[-2:]:
    rm.c.ack(m.mid, 1)
print("ok receive-maximum", flush=True)

# Maximum Packet Size 100: a larger message is not sent to this client
# (the broker counts it; the Rust side checks the count).
t = f"v5/{RUN}/mp"
mp = Client("mp", props=connect_props(MaximumPacketSize=100))
mp.sub(f"{t}/#", qos=1)
pub.pub(f"{t}/big", "x" * 200, qos=1)
pub.pub(f"{t}/small", "ok", qos=1)
m = mp.get()
if (m.topic, m.payload) != (f"{t}/small", b"ok"):
    fail(f"maximum packet size: got {m.topic} {len(m.payload)} bytes")
print("ok maximum-packet-size", flush=True)

# Topic aliases towards the client (its Topic Alias Maximum 2): the first
# message on a topic sets an alias, the next ones carry the alias alone.
# paho does not resolve aliases itself, so this reads them as sent.
t = f"v5/{RUN}/ta"
ta = Client("ta", props=connect_props(TopicAliasMaximum=2))
ta.sub(f"{t}/#", qos=1)
for topic in ["a", "a", "b", "a"]:
    pub.pub(f"{t}/{topic}", topic, qos=1)
seen = [(m.topic, getattr(m.properties, "TopicAlias", None), m.payload.decode())
        for m in (ta.get() for _ in range(4))]
want = [(f"{t}/a", 1, "a"), ("", 1, "a"), (f"{t}/b", 2, "b"), ("", 1, "a")]
if seen != want:
    fail(f"topic aliases to the client: {seen}")
# And from the client: paho sends the alias alone when told to.
tb = f"v5/{RUN}/tb"
reader = Client("tb-reader")
reader.sub(f"{tb}/#", qos=1)
alias = Properties(PacketTypes.PUBLISH)
alias.TopicAlias = 1
pub.pub(f"{tb}/x", "set", qos=1, props=alias)
pub.pub("", "used", qos=1, props=alias)
got = [(m.topic, m.payload.decode()) for m in (reader.get(), reader.get())]
if got != [(f"{tb}/x", "set"), (f"{tb}/x", "used")]:
    fail(f"topic aliases from the client: {got}")
print("ok topic-aliases", flush=True)

# A will at QoS 2 reaches a QoS 2 subscriber at QoS 2.
t = f"v5/{RUN}/will"
watcher = Client("will-watcher")
watcher.sub(f"{t}/#", qos=2)
doomed = Client("doomed", login=True, will=(f"{t}/gone", "bye", 2, False))
doomed.c.disconnect(reasoncode=mqtt.ReasonCode(PacketTypes.DISCONNECT, identifier=0x04))
m = watcher.get()
if (m.topic, m.payload, m.qos) != (f"{t}/gone", b"bye", 2):
    fail(f"will: {m.topic} {m.payload} QoS {m.qos}")
print("ok will-qos2", flush=True)

# Session expiry from DISCONNECT: a session asked for 300 s ends at once
# when DISCONNECT sets 0, and lives on when DISCONNECT keeps it.
for at_disconnect, present in [(0, False), (300, True)]:
    name = f"se{at_disconnect}"
    c = Client(name, props=connect_props(SessionExpiryInterval=300), clean=False)
    bye = Properties(PacketTypes.DISCONNECT)
    bye.SessionExpiryInterval = at_disconnect
    c.c.disconnect(properties=bye)
    c.c.loop_stop()
    again = Client(name, props=connect_props(SessionExpiryInterval=300), clean=False)
    if again.present != present:
        fail(f"session expiry {at_disconnect} at DISCONNECT: session present {again.present}")
    again.c.disconnect(properties=bye)
print("ok session-expiry", flush=True)

# Queued for a persistent session while its client is away: what expired
# meanwhile is not sent, the rest goes with what is left of its interval.
t = f"v5/{RUN}/qexp"
away = Client("qexp", props=connect_props(SessionExpiryInterval=300), clean=False)
away.sub(f"{t}/#", qos=1)
away.c.disconnect()
away.c.loop_stop()
for name, seconds in [("short", 1), ("long", 600)]:
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = seconds
    pub.pub(f"{t}/{name}", name, qos=1, props=props)
wait_one_second_passed("qexp")
back = Client("qexp", props=connect_props(SessionExpiryInterval=300), clean=False)
if not back.present:
    fail("queued expiry: the session was not kept")
m = back.get()
left = getattr(m.properties, "MessageExpiryInterval", None)
if m.topic != f"{t}/long" or left is None or not 500 < left < 600:
    fail(f"queued expiry: got {m.topic} with {left} s left")
pub.pub(f"{t}/marker", "m", qos=1)
if back.get().topic != f"{t}/marker":
    fail("queued expiry: more than the one message came")
print("ok queued-expiry", flush=True)
print("ok all", flush=True)
