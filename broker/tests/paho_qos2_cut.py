"""QoS 2 exactly once across a reconnect in the middle of the handshake,
with paho-mqtt's v5 client and persistent sessions.

Driven by broker/tests/qos2.rs:
    python3 paho_qos2_cut.py HOST PORT USER PASS
A proxy between paho and the broker cuts the connection once, right after
one packet of the handshake went through, and drops whatever either side
sends after it; paho reconnects (through the proxy, which then passes
everything) and resumes its session. Four cuts:
  to-client-after-publish  broker -> paho PUBLISH went through (PUBREC lost)
  to-client-after-pubrec   paho -> broker PUBREC went through (PUBREL lost)
  from-client-after-publish paho -> broker PUBLISH went through (PUBREC lost)
  from-client-after-pubrec broker -> paho PUBREC went through (PUBREL lost)
Each message must reach the application exactly once: a marker published
after it must be the very next message. Prints "ok <cut>" per cut, then
"ok all"; exits 1 with the reason otherwise. Every wait is bounded.
"""
import queue
import socket
import sys
import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
WAIT = 20
RUN = uuid.uuid4().hex[:8]
PUBLISH, PUBREC = 3, 5


def fail(why):
    print("FAIL", why, flush=True)
    sys.exit(1)


def frame_len(buf):
    """Length of the first whole MQTT packet in buf, or None."""
    mult, length, i = 1, 0, 1
    while True:
        if i >= len(buf):
            return None
        b = buf[i]
        length += (b & 0x7F) * mult
        mult *= 128
        i += 1
        if not b & 0x80:
            break
        if i > 4:
            raise ValueError("bad remaining length")
    return i + length if len(buf) >= i + length else None


class Proxy:
    """Forwards whole packets; after the first `kind` packet going
    `direction` ("to-client" or "from-client"), forwards nothing more on that
    connection and closes both sides gracefully (FIN, then reads to EOF:
    closing with unread data would send RST and could discard the packet
    that did go through)."""

    def __init__(self, direction, kind):
        self.trigger = (direction, kind)
        self.cut = threading.Event()
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.port = self.ls.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        for _ in range(20):  # bounded: a handful of reconnects at most
            try:
                client, _ = self.ls.accept()
            except OSError:
                return
            upstream = socket.create_connection((host, port))
            state = {"stopped": False}
            for src, dst, d in [(client, upstream, "from-client"), (upstream, client, "to-client")]:
                threading.Thread(target=self.pump, args=(src, dst, d, state), daemon=True).start()

    def pump(self, src, dst, direction, state):
        buf = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if state["stopped"]:
                    continue
                buf += data
                while (n := frame_len(buf)) is not None:
                    pkt, buf = buf[:n], buf[n:]
                    dst.sendall(pkt)
                    if not self.cut.is_set() and (direction, pkt[0] >> 4) == self.trigger:
                        self.cut.set()
                        state["stopped"] = True
                        for s in (src, dst):
                            s.shutdown(socket.SHUT_WR)
                        break
                    if state["stopped"]:
                        break
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.ls.close()


class Client:
    """A paho v5 client with a persistent session; messages land in a queue."""

    def __init__(self, name, port_, login=False):
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{RUN}",
                             protocol=mqtt.MQTTv5)
        if login:
            self.c.username_pw_set(user, password)
        self.c.reconnect_delay_set(min_delay=1, max_delay=1)
        self.msgs = queue.Queue()
        self.connects = queue.Queue()
        self.acks = queue.Queue()
        self.c.on_message = lambda c, u, m: self.msgs.put((m.topic, m.payload.decode(), m.qos))
        self.c.on_connect = lambda c, u, f, rc, p: self.connects.put((rc, f.session_present))
        self.c.on_subscribe = lambda c, u, mid, codes, props: self.acks.put(codes)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        self.c.connect(host, port_, keepalive=30, clean_start=False, properties=props)
        self.c.loop_start()
        rc, _ = self.connects.get(timeout=WAIT)
        if rc != 0:
            fail(f"{name}: CONNACK {rc}")

    def sub(self, topic):
        self.c.subscribe(topic, qos=2)
        self.acks.get(timeout=WAIT)

    def pub(self, topic, payload):
        self.c.publish(topic, payload, qos=2).wait_for_publish(WAIT)

    def resumed(self):
        """Waits for the reconnect after the cut; True when the session was there."""
        rc, present = self.connects.get(timeout=WAIT)
        return rc == 0 and present

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


direct_pub = Client("direct-pub", port, login=True)


def check(name, proxy, cut_client, reader, t, handshake=None):
    """After the cut: `cut_client` resumes its session, `handshake` (paho's
    own publish) completes, and `reader` got the message once, then the
    marker."""
    if not proxy.cut.wait(WAIT):
        fail(f"{name}: the cut never happened")
    if not cut_client.resumed():
        fail(f"{name}: session not resumed")
    if handshake is not None:
        handshake.wait_for_publish(WAIT)
        if not handshake.is_published():
            fail(f"{name}: the handshake never completed")
    direct_pub.pub(f"{t}/marker", "marker")
    got = [reader.msgs.get(timeout=WAIT), reader.msgs.get(timeout=WAIT)]
    if got != [(f"{t}/m", "once", 2), (f"{t}/marker", "marker", 2)]:
        fail(f"{name}: {got}")
    cut_client.stop()
    proxy.close()
    print(f"ok {name}", flush=True)


# The broker sends QoS 2 to paho; the cut is on paho's connection.
for name, trigger in [("to-client-after-publish", ("to-client", PUBLISH)),
                      ("to-client-after-pubrec", ("from-client", PUBREC))]:
    proxy = Proxy(*trigger)
    t = f"cut/{RUN}/{name}"
    reader = Client(f"reader-{name}", proxy.port)
    reader.sub(f"{t}/#")
    direct_pub.pub(f"{t}/m", "once")
    check(name, proxy, reader, reader, t)

# paho publishes QoS 2 through the cut; a direct reader counts.
reader = Client("direct-reader", port)
for name, trigger in [("from-client-after-publish", ("from-client", PUBLISH)),
                      ("from-client-after-pubrec", ("to-client", PUBREC))]:
    proxy = Proxy(*trigger)
    t = f"cut/{RUN}/{name}"
    reader.sub(f"{t}/#")
    writer = Client(f"writer-{name}", proxy.port, login=True)
    info = writer.c.publish(f"{t}/m", "once", qos=2)
    check(name, proxy, writer, reader, t, handshake=info)
print("ok all", flush=True)
