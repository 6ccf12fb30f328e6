"""mqttwarn functions for the firehose (see firehose.ini)."""
import json


def only_merges(topic, message):
    """Suppress (True) every gerrit event but a merge, in either payload
    mode: gerrit's own `type` (raw) or the CloudEvents `type`."""
    try:
        kind = json.loads(message).get("type", "")
    except (ValueError, AttributeError):
        return True
    return kind not in ("change-merged", "gerrit.change-merged")
