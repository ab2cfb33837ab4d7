"""Subscriptions: ``<ns>_subscribe`` / ``<ns>_unsubscribe`` and ``publish``, encode-once fan-out.

A namespace declares topics (``registry.topic("eth", "newHeads")``). A client calls
``eth_subscribe`` with ``["newHeads"]`` (plus the topic's own params, if it takes any) and
gets a subscription id; node code calls ``dispatcher.publish(topic, payload)`` and every
subscriber receives::

    {"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":ID,"result":payload}}

**One id per channel, shared by its subscribers.** A *channel* is a topic plus a params
key (None for a topic without params). Its id (``0x`` + 32 random hex digits) is drawn
when its first subscriber arrives and forgotten when the last one leaves. Because every
subscriber of a channel knows the same id, the notification bytes are identical for all
of them: ``publish`` encodes the message once and hands the same ``bytes`` to
``transport.send_many`` once, whatever the number of subscribers (with per-subscriber
ids it would have to encode, or at least copy, one message per subscriber). The id is a
name, not a capability: ``<ns>_unsubscribe(id)`` only ends the *caller's own*
subscription, so knowing another client's id gives nothing. Subscribing twice to the
same channel from one connection returns the same id and counts once.

**Slow subscribers.** ``send_many`` refuses to queue to a connection whose pending output
would pass ``Limits.max_subscriber_queue`` bytes. Such a subscriber is dropped from that
channel (its other subscriptions are untouched until they, too, find it over the cap),
and is sent one last notification, queued past the cap since it is small::

    {"jsonrpc":"2.0","method":"eth_subscription",
     "params":{"subscription":ID,"error":{"code":-32004,"message":"subscriber too slow"}}}

so a client that catches up learns why its stream stopped, and may resubscribe; the
connection and its other calls survive. ``on_slow="close"`` instead closes the connection
with 1008 (policy violation), for deployments that prefer to shed such clients entirely.

**Caps and lifetime.** One connection holds at most ``Limits.max_subscriptions``
subscriptions (more → -32005 "too many subscriptions"). Subscriptions end with their
connection (``drop(cid)``, from ``Dispatcher.on_close``). Memory: one dict entry per
subscription plus one small dict per *subscribed* connection; connections that never
subscribe cost nothing here.

``publish`` runs on the event loop thread and never awaits (from another thread use
``loop.call_soon_threadsafe(dispatcher.publish, ...)``).
"""
from __future__ import annotations

import secrets
from typing import Any, Iterable

from .errors import (
    CLOSE_POLICY_VIOLATION,
    SUBSCRIBER_TOO_SLOW,
    TOO_MANY_SUBSCRIPTIONS,
    InvalidParams,
    RPCError,
)
from .jsonrpc import subscription_error, subscription_result
from .limits import Limits
from .service import Service, Topic


class Channel:
    """Subscribers of one (topic, key), and the id they share."""

    __slots__ = ("topic", "key", "id", "cids")

    def __init__(self, topic: Topic, key: Any, sub_id: str) -> None:
        self.topic = topic
        self.key = key
        self.id = sub_id
        self.cids: dict[int, None] = {}  #: subscribed connection ids (an ordered set)

    def __repr__(self) -> str:
        return f"<Channel {self.topic.qualified_name} key={self.key!r} id={self.id} n={len(self.cids)}>"


def new_id() -> str:
    return "0x" + secrets.token_hex(16)


class Subscriptions:
    """Subscription state of one Dispatcher (one transport)."""

    def __init__(self, transport: Any, limits: Limits = Limits(), *, on_slow: str = "notify") -> None:
        if on_slow not in ("notify", "close"):
            raise ValueError('on_slow must be "notify" or "close"')
        self._transport = transport
        self._max_per_cid = limits.max_subscriptions
        self._max_queue = limits.max_subscriber_queue
        self._on_slow = on_slow
        self._channels: dict[tuple[Topic, Any], Channel] = {}
        self._by_id: dict[str, Channel] = {}
        self._by_cid: dict[int, dict[str, Channel]] = {}  # only for subscribed connections
        #: subscriptions ended because send_many refused their subscriber (over its
        #: queue cap, or already gone)
        self.dropped_slow = 0
        #: notifications written by ``publish``, one per subscriber reached (the -32004
        #: notice of a dropped subscriber is counted by ``dropped_slow`` instead)
        self.notifications_sent = 0

    # --- the built-in methods --------------------------------------------------------

    def subscribe(self, cid: int, service: Service, params: Any) -> str:
        """``<ns>_subscribe``: params ``[topic, *topic_params]``; returns the channel id."""
        if type(params) is not list or not params or type(params[0]) is not str:
            raise InvalidParams("want params [topic, ...topic params]")
        topic = service.topics.get(params[0])
        if topic is None:
            raise InvalidParams(f"unknown topic '{params[0][:64]}'")
        key = topic.key(params[1:], self._transport, cid)
        mine = self._by_cid.get(cid)
        channel = self._channels.get((topic, key))
        if channel is not None and cid in channel.cids:
            return channel.id
        if mine is not None and len(mine) >= self._max_per_cid:
            raise RPCError(TOO_MANY_SUBSCRIPTIONS, "too many subscriptions")
        if channel is None:
            sub_id = new_id()
            while sub_id in self._by_id:  # pragma: no cover - 128 random bits
                sub_id = new_id()
            channel = self._channels[(topic, key)] = self._by_id[sub_id] = Channel(topic, key, sub_id)
        channel.cids[cid] = None
        if mine is None:
            mine = self._by_cid[cid] = {}
        mine[channel.id] = channel
        return channel.id

    def unsubscribe(self, cid: int, params: Any) -> bool:
        """``<ns>_unsubscribe``: params ``[id]``; True if the caller held it."""
        if type(params) is not list or len(params) != 1 or type(params[0]) is not str:
            raise InvalidParams("want params [subscription id]")
        mine = self._by_cid.get(cid)
        if mine is None:
            return False
        channel = mine.get(params[0])
        if channel is None:
            return False
        self._remove(cid, channel)
        return True

    # --- publishing ------------------------------------------------------------------

    def publish(self, topic: Topic, payload: Any, key: Any = None) -> int:
        """Send ``payload`` to every subscriber of (topic, key); returns how many were
        written. Encodes once (raises TypeError if ``payload`` is not JSON) and calls
        ``send_many`` once; subscribers it refuses are dropped (see the module doc)."""
        channel = self._channels.get((topic, key))
        if channel is None:
            return 0
        cids = list(channel.cids)
        data = subscription_result(topic.notify_method, channel.id, payload)
        refused = self._transport.send_many(cids, data, self._max_queue)
        if refused:
            for cid in refused:
                self._drop_slow(channel, cid)
        sent = len(cids) - len(refused)
        self.notifications_sent += sent
        return sent

    def _drop_slow(self, channel: Channel, cid: int) -> None:
        if cid not in channel.cids:
            return
        self.dropped_slow += 1
        sub_id = channel.id
        method = channel.topic.notify_method
        self._remove(cid, channel)
        # A connection already gone makes send() return False: nothing more to do.
        if self._on_slow == "close":
            self._transport.close(cid, CLOSE_POLICY_VIOLATION, "subscriber too slow")
        else:
            self._transport.send(cid, subscription_error(method, sub_id, SUBSCRIBER_TOO_SLOW))

    # --- lifetime --------------------------------------------------------------------

    def _remove(self, cid: int, channel: Channel) -> None:
        channel.cids.pop(cid, None)
        mine = self._by_cid.get(cid)
        if mine is not None:
            mine.pop(channel.id, None)
            if not mine:
                del self._by_cid[cid]
        if not channel.cids:
            del self._channels[(channel.topic, channel.key)]
            del self._by_id[channel.id]

    def drop(self, cid: int) -> int:
        """End every subscription of ``cid`` (its connection closed); returns how many."""
        mine = self._by_cid.pop(cid, None)
        if not mine:
            return 0
        for channel in mine.values():
            channel.cids.pop(cid, None)
            if not channel.cids:
                del self._channels[(channel.topic, channel.key)]
                del self._by_id[channel.id]
        return len(mine)

    def unsubscribe_ids(self, cid: int, ids: Iterable[str]) -> None:
        """End the given subscriptions of ``cid`` (used to undo a batch never delivered)."""
        mine = self._by_cid.get(cid)
        if mine is None:
            return
        for sub_id in ids:
            channel = mine.get(sub_id)
            if channel is not None:
                self._remove(cid, channel)

    # --- introspection ---------------------------------------------------------------

    def count(self, cid: int | None = None) -> int:
        """Subscriptions of ``cid``, or of every connection."""
        if cid is not None:
            return len(self._by_cid.get(cid, ()))
        return sum(len(m) for m in self._by_cid.values())

    def subscribers(self, topic: Topic, key: Any = None) -> list[int]:
        channel = self._channels.get((topic, key))
        return list(channel.cids) if channel else []

    def channel_id(self, topic: Topic, key: Any = None) -> str | None:
        channel = self._channels.get((topic, key))
        return channel.id if channel else None

    def keys(self, topic: Topic) -> list[Any]:
        """The keys of ``topic`` that have subscribers (to publish per filter)."""
        return [k for (t, k) in self._channels if t is topic]

    def __len__(self) -> int:
        """Channels with at least one subscriber."""
        return len(self._channels)


__all__ = ["Channel", "Subscriptions", "new_id"]
