"""paho-mqtt round trip over websockets through firehose-broker.

Driven by broker/tests/third_party_clients.rs:
    python3 paho_ws.py HOST PORT USER PASS
An anonymous MQTT 3.1.1 subscriber on paho/#, an authenticated MQTT 5
publisher, and an anonymous publish that must be refused (v5 PUBACK 0x87).
Prints one line per check and exits 0, or exits 1 with the reason.
"""
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
WAIT = 15
got = threading.Event()
subscribed = threading.Event()
messages = []


def client(client_id, protocol):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                    transport="websockets", protocol=protocol)
    c.ws_set_options(path="/mqtt")
    return c


def on_message(_c, _u, msg):
    messages.append((msg.topic, msg.payload.decode()))
    got.set()


sub = client("paho-sub", mqtt.MQTTv311)
sub.on_message = on_message
sub.on_subscribe = lambda *a: subscribed.set()
sub.on_connect = lambda c, *a: c.subscribe("paho/#", qos=1)
sub.connect(host, port, keepalive=30)
sub.loop_start()
if not subscribed.wait(WAIT):
    sys.exit("subscriber never got its SUBACK")

pub = client("paho-pub", mqtt.MQTTv5)
pub.username_pw_set(user, password)
pub.connect(host, port, keepalive=30)
pub.loop_start()
info = pub.publish("paho/ws", "hello from paho", qos=1)
info.wait_for_publish(WAIT)
if not got.wait(WAIT):
    sys.exit("the message never arrived")
print(f"received {messages[0][0]} {messages[0][1]}")

# Anonymous clients may not publish: v5 says so with PUBACK 0x87.
acks = []
acked = threading.Event()
anon = client("paho-anon", mqtt.MQTTv5)
anon.on_publish = lambda c, u, mid, rc, props: (acks.append(rc), acked.set())
anon.connect(host, port, keepalive=30)
anon.loop_start()
anon.publish("paho/ws", "not allowed", qos=1)
if not acked.wait(WAIT):
    sys.exit("no PUBACK for the anonymous publish")
print(f"anonymous publish answered {acks[0].value:#04x}")
for c in (anon, pub, sub):
    c.disconnect()
    c.loop_stop()
