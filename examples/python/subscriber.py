#!/usr/bin/env python3
"""Read the firehose from Python with paho-mqtt (pip install paho-mqtt).

Prints one line per event: its type and topic, whatever the bridge's payload
mode (CloudEvents envelopes carry a "type"; raw payloads are named from the
topic the way the bridges name them).

Run: python3 examples/python/subscriber.py --host 127.0.0.1 --topic 'gerrit/#'
"""
import argparse
import json

import paho.mqtt.client as mqtt


def event_type(topic, payload):
    """The CloudEvents type of a message, in either payload mode."""
    try:
        data = json.loads(payload)
    except ValueError:
        return "mqtt"
    if isinstance(data, dict) and "specversion" in data:
        return data.get("type", "mqtt")
    levels = topic.split("/")
    if levels[0] == "gerrit" and isinstance(data, dict):
        return "gerrit." + str(data.get("type", ""))
    if levels[0] == "nova" and isinstance(data, dict):
        return "nova." + str(data.get("event_type", "service"))
    if levels[0] == "launchpad" and isinstance(data, dict):
        return "launchpad." + str(data.get("event-type", "notification"))
    if levels[0] == "ansible" and len(levels) > 4:
        return "ansible." + ".".join(levels[3:5]).lower()
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
