# -*- coding: utf-8 -*-
# Firehose callback plugin: playbook, play, task-result and stats events as
# JSON lines on the unix socket named by FIREHOSE_ANSIBLE_SOCKET, where
# `firehose-ansible serve` or `firehose-ansible run` publishes them on MQTT.
#
# Standard library only. Watching a deployment must never break or stall
# it: if the socket is absent or the bridge is slow, the plugin warns once
# and the playbook goes on at full speed (events that do not fit a bounded
# buffer are dropped and counted, never waited for).
from __future__ import annotations

DOCUMENTATION = """
    name: firehose
    type: notification
    short_description: send playbook events to the Firehose MQTT bus
    description:
      - Writes one JSON line per event to the unix socket named by
        FIREHOSE_ANSIBLE_SOCKET (firehose-ansible publishes them).
      - Never blocks the playbook; events are dropped (and counted) when the
        bridge is absent or slow.
    requirements:
      - enable in configuration (ANSIBLE_CALLBACKS_ENABLED=firehose)
"""

import errno
import json
import os
import select
import socket
import time
import uuid

from ansible.plugins.callback import CallbackBase

# Most bytes held for a slow bridge before events are dropped.
MAX_BUFFER = 4 * 1024 * 1024
# How long the end of the playbook waits for the last events to leave, at
# most, and how long without any progress (a stuck bridge) it waits at all.
FINAL_FLUSH_SECONDS = 2.0
NO_PROGRESS_SECONDS = 0.2
NO_LOG = (
    "the output has been hidden due to the fact that 'no_log: true' was "
    "specified for this result"
)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "firehose"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.session = str(uuid.uuid1())
        self.launcher = socket.gethostname()
        self.play_id = None
        self.play_name = None
        self.failed = False
        self.buffer = bytearray()
        self.dropped = 0
        self.warned = False
        self.sock = None
        path = os.environ.get("FIREHOSE_ANSIBLE_SOCKET")
        if not path:
            self._warn_once("FIREHOSE_ANSIBLE_SOCKET is not set; no events are sent")
            return
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(1.0)
            s.connect(path)
            s.setblocking(False)
            self.sock = s
        except OSError as e:
            self._warn_once("cannot reach the firehose bridge at %s (%s); no events are sent" % (path, e))

    # -- sending, never blocking -------------------------------------------

    def _warn_once(self, msg):
        if not self.warned:
            self.warned = True
            self._display.warning("firehose: " + msg)

    def _emit(self, event, **fields):
        if self.sock is None:
            return
        fields["event"] = event
        fields["id"] = str(uuid.uuid4())
        fields["time"] = time.time()
        fields["session"] = self.session
        fields["launcher"] = self.launcher
        try:
            line = json.dumps(fields, sort_keys=True, default=str).encode("utf-8") + b"\n"
        except (TypeError, ValueError) as e:
            self._warn_once("an event could not be encoded (%s)" % e)
            self.dropped += 1
            return
        if len(self.buffer) + len(line) > MAX_BUFFER:
            self.dropped += 1
            self._warn_once("the bridge is not keeping up; dropping events")
            return
        self.buffer += line
        self._flush()

    def _flush(self):
        while self.buffer and self.sock is not None:
            try:
                n = self.sock.send(self.buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return
                self._warn_once("the bridge went away (%s); no more events are sent" % e)
                self._close()
                return
            del self.buffer[:n]

    def _close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.buffer = bytearray()

    def _final_flush(self):
        deadline = time.monotonic() + FINAL_FLUSH_SECONDS
        while self.buffer and self.sock is not None:
            left = min(deadline - time.monotonic(), NO_PROGRESS_SECONDS)
            if left <= 0:
                break
            _, writable, _ = select.select([], [self.sock], [], left)
            if not writable:
                break  # no progress: the bridge is stuck
            self._flush()
        if self.buffer:
            self._warn_once("the bridge is not keeping up; the last events were not sent")
        self._close()

    # -- what a result says -------------------------------------------------

    @staticmethod
    def _parts(result):
        # ansible-core 2.19 offers .host/.task/.result; older ones the _ names.
        host = getattr(result, "host", None) or getattr(result, "_host")
        task = getattr(result, "task", None) or getattr(result, "_task")
        res = getattr(result, "result", None)
        if not isinstance(res, dict):
            res = getattr(result, "_result", {})
        return host, task, res

    def _task(self, result, status, ignored=False, item=False):
        host, task, res = self._parts(result)
        # _dump_results censors no_log results, drops _ansible_* keys, and
        # gives the JSON string the original plugin published.
        if res.get("_ansible_no_log") or getattr(task, "no_log", False):
            dumped = json.dumps({"censored": NO_LOG, "changed": bool(res.get("changed"))})
        else:
            dumped = self._dump_results(res)
        if status in ("FAILED", "UNREACHABLE") and not ignored:
            self.failed = True
        self._emit(
            "task",
            play_id=self.play_id,
            play_name=self.play_name,
            host=host.get_name(),
            task="TASK: %s" % task.get_name(),
            action=getattr(task, "action", None),
            status=status,
            changed=bool(res.get("changed")),
            ignored=bool(ignored),
            item=bool(item),
            result=dumped,
        )

    # -- hooks ----------------------------------------------------------------

    def v2_playbook_on_play_start(self, play):
        self.play_id = str(play._uuid)
        self.play_name = play.get_name()
        self._emit("play_start", play_id=self.play_id, play_name=self.play_name)

    def v2_runner_on_ok(self, result, **kwargs):
        self._task(result, "OK")

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._task(result, "FAILED", ignored=ignore_errors)

    def v2_runner_on_skipped(self, result, **kwargs):
        self._task(result, "SKIPPED")

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._task(result, "UNREACHABLE")

    def v2_runner_on_async_ok(self, result, **kwargs):
        self._task(result, "OK")

    def v2_runner_on_async_failed(self, result, **kwargs):
        self._task(result, "FAILED")

    def v2_runner_item_on_ok(self, result, **kwargs):
        self._task(result, "OK", item=True)

    def v2_runner_item_on_failed(self, result, **kwargs):
        _, task, _ = self._parts(result)
        self._task(result, "FAILED", ignored=bool(getattr(task, "ignore_errors", False)), item=True)

    def v2_runner_item_on_skipped(self, result, **kwargs):
        self._task(result, "SKIPPED", item=True)

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed.keys())
        for h in hosts:
            s = stats.summarize(h)
            if s.get("failures") or s.get("unreachable"):
                self.failed = True
            self._emit("stats", play_id=self.play_id, play_name=self.play_name, host=h, stats=s)
        self._emit(
            "finish",
            play_id=self.play_id,
            play_name=self.play_name,
            status="FAILED" if self.failed else "OK",
            dropped=self.dropped,
        )
        self._final_flush()
