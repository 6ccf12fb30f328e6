#!/usr/bin/env python3
"""Read the firehose from Python with paho-mqtt (pip install paho-mqtt).

Prints one line per event: its type and topic, whatever the bridge's payload
mode (CloudEvents envelopes carry a "type"; raw payloads are named from the
topic the way the bridges name them).

Run: python3 examples/python/subscriber.py --host 127.0.0.1 --topic 'gerrit/#'
"""
import argparse
import json
import re

import paho.mqtt.client as mqtt

# The first topic level of each source family (a --base-topic may come
# before it), as the SDK reads them.
SOURCES = ("gerrit", "nova", "launchpad", "ansible", "firehose", "gearman-subunit")


def event_type(topic, payload, zuul_root="zuul"):
    """The CloudEvents type of a message, in either payload mode: the same
    names the SDK and firehose-sub give (sdk/src/reader.rs), or "mqtt" for
    what is not a firehose event."""
    try:
        data = json.loads(payload)
    except ValueError:
        return "mqtt"
    if not isinstance(data, dict):
        return "mqtt"
    spec = data.get("specversion")
    if isinstance(spec, str) and spec.startswith("1"):
        return data.get("type") if isinstance(data.get("type"), str) else "mqtt"
    # Zuul's own reports, under its root (before the families: a project
    # named openstack/nova is not nova).
    if topic == zuul_root or topic.startswith(zuul_root + "/"):
        action = data.get("action")
        if not isinstance(action, str) or not action:
            return "mqtt"
        return "zuul.buildset." + re.sub(r"[^a-z0-9_-]", "_", action.lower())
    levels = topic.split("/")
    start = next((i for i, level in enumerate(levels) if level in SOURCES), None)
    if start is None:
        return "mqtt"
    rest = levels[start:]
    family = rest[0]
    if family == "gerrit" and isinstance(data.get("type"), str):
        return "gerrit." + data["type"]
    if family == "nova":
        if len(rest) >= 5 and rest[2] == "service":
            return "nova.service"
        # oslo's 2.0 envelope carries the message as a JSON string.
        if isinstance(data.get("oslo.message"), str):
            try:
                data = json.loads(data["oslo.message"])
            except ValueError:
                return "mqtt"
        if isinstance(data, dict) and isinstance(data.get("event_type"), str):
            return "nova." + data["event_type"]
        return "mqtt"
    if family == "launchpad":
        kind = data.get("event-type")
        return "launchpad." + (kind if isinstance(kind, str) else "notification")
    if family == "ansible":
        # ansible/playbook/<uuid>/action/start | task/<host>/<STATUS> |
        # stats/<host> | action/finish/<STATUS>
        tail = rest[3:]
        if tail[:2] == ["action", "start"]:
            return "ansible.play.start"
        if tail[:2] == ["action", "finish"]:
            return "ansible.playbook.finish"
        if len(tail) >= 3 and tail[0] == "task":
            return "ansible.task." + tail[2].lower()
        if tail[:1] == ["stats"]:
            return "ansible.stats"
        return "mqtt"
    if family == "gearman-subunit":
        status = data.get("status")
        if len(rest) >= 4 and status in ("success", "failed"):
            return "subunit.run." + status
        return "mqtt"
    if family == "firehose" and rest[1:2] == ["status"]:
        return "firehose.status"
    return "mqtt"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--topic", default="#")
    ap.add_argument("--count", type=int, default=0, help="exit after this many events")
    a = ap.parse_args()
    seen = 0

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe(a.topic)

    def on_message(client, userdata, msg):
        nonlocal seen
        if a.count and seen >= a.count:
            return  # already disconnecting
        print(event_type(msg.topic, msg.payload), msg.topic, flush=True)
        seen += 1
        if a.count and seen >= a.count:
            client.disconnect()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = on_connect
    c.on_message = on_message
    c.connect(a.host, a.port)
    c.loop_forever()


if __name__ == "__main__":
    main()
