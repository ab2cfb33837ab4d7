"""ConnTable: slots and generations, per-IP caps, the idle / ping / pong scan, info."""
from __future__ import annotations

import socket
import time

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fastrpc._core import ConnTable, monotonic_ms
from fastrpc.errors import PerIPLimitExceeded, TableFull

WRAP = 1 << 32
SLOT_MASK = 0xFFFFFFFF


def slot_of(cid: int) -> int:
    return cid & SLOT_MASK


class TestSlots:
    def test_empty_table(self):
        table = ConnTable(10)
        assert table.capacity == 10
        assert table.max_per_ip == 256
        assert len(table) == 0
        assert table.ips() == 0
        assert 0 not in table
        with pytest.raises(KeyError):
            table.remove(0)

    def test_fill_to_capacity_then_table_full(self):
        table = ConnTable(5, max_per_ip=100)
        cids = [table.add(100 + i, "10.0.0.1", 1000 + i, now=0) for i in range(5)]
        assert len(set(cids)) == 5
        assert len(set(slot_of(c) for c in cids)) == 5
        assert all(slot_of(c) < 5 for c in cids)
        assert len(table) == 5
        for ip in ("10.0.0.1", "10.0.0.2", "::1"):
            with pytest.raises(TableFull):
                table.add(999, ip, now=0)
        # Nothing changed by the refusals.
        assert len(table) == 5
        assert table.ip_count("10.0.0.1") == 5
        assert table.ip_count("10.0.0.2") == 0
        assert table.ips() == 1
        assert all(c in table for c in cids)

    def test_remove_returns_the_fd(self):
        table = ConnTable(4)
        cids = {fd: table.add(fd, "192.0.2.1", now=0) for fd in (7, 8, 9)}
        assert table.remove(cids[8]) == 8
        assert len(table) == 2
        assert cids[8] not in table
        assert cids[7] in table and cids[9] in table
        with pytest.raises(KeyError):
            table.remove(cids[8])
        assert table.remove(cids[7]) == 7
        assert table.remove(cids[9]) == 9
        assert len(table) == 0

    def test_reused_slot_gets_a_new_generation(self):
        table = ConnTable(1)
        old = table.add(3, "10.1.1.1", 1, now=0)
        assert table.remove(old) == 3
        new = table.add(4, "10.1.1.2", 2, now=0)
        assert slot_of(new) == slot_of(old)
        assert new != old
        assert new >> 32 != old >> 32
        assert old not in table
        assert new in table
        for call in (lambda: table.remove(old), lambda: table.info(old), lambda: table.touch(old, 0),
                     lambda: table.count_traffic(old, 1), lambda: table.set_inflight(old, 1),
                     lambda: table.mark_ping_sent(old, 0)):
            with pytest.raises(KeyError):
                call()
        # The stale id touched nothing of the new connection.
        info = table.info(new)
        assert info["fd"] == 4
        assert info["peer"] == ("10.1.1.2", 2)
        assert info["bytes_in"] == 0 and info["inflight"] == 0
        assert table.remove(new) == 4

    def test_every_reuse_is_a_new_id(self):
        table = ConnTable(2)
        keep = table.add(1, "10.0.0.1", now=0)
        seen = {keep}
        for i in range(2000):
            cid = table.add(i, "10.0.0.2", now=0)
            assert cid not in seen
            seen.add(cid)
            assert table.remove(cid) == i
        assert keep in table
        assert len(table) == 1

    def test_remove_and_add_in_any_order_reuses_slots(self):
        table = ConnTable(8)
        cids = [table.add(i, "10.0.0.1", now=0) for i in range(8)]
        for i in (3, 0, 7, 5):
            table.remove(cids[i])
        again = [table.add(100 + i, "10.0.0.1", now=0) for i in range(4)]
        assert sorted(slot_of(c) for c in again) == [0, 3, 5, 7]
        with pytest.raises(TableFull):
            table.add(1, "10.0.0.1", now=0)
        live = [cids[i] for i in (1, 2, 4, 6)] + again
        assert all(c in table for c in live)
        assert sorted(table.remove(c) for c in live) == [1, 2, 4, 6, 100, 101, 102, 103]
        assert len(table) == 0
        assert table.ips() == 0

    @pytest.mark.parametrize("derive", [
        lambda real: -1, lambda real: 1 << 64, lambda real: (1 << 64) + real,
        lambda real: real + (1 << 32),  # the next generation of the same slot
        lambda real: real - (1 << 32) if real >> 32 else real + (2 << 32),  # another generation
        lambda real: real ^ 1,  # a slot never used
        lambda real: (real & ~SLOT_MASK) | 4,  # a slot past the capacity
        lambda real: (real & ~SLOT_MASK) | SLOT_MASK,
    ])
    def test_unknown_ids(self, derive):
        table = ConnTable(4)
        real = table.add(1, "10.0.0.1", now=0)
        cid = derive(real)
        assert cid != real
        assert cid not in table
        for call in (table.remove, table.info, lambda c: table.touch(c, 0), lambda c: table.set_inflight(c, 1)):
            with pytest.raises(KeyError):
                call(cid)
        assert len(table) == 1
        assert real in table


class TestPool:
    def test_table_pool(self):
        from fastrpc._core import BufferPool

        pool = BufferPool()
        table = ConnTable(4, pool=pool)
        assert table.pool is pool
        assert isinstance(ConnTable(4).pool, BufferPool)
        cid = table.add(1, "10.0.0.1", now=0)
        table.remove(cid)
        assert pool.bytes_in_use == 0


class TestPerIP:
    V4 = "198.51.100.7"
    V6 = "2001:db8::42"

    @pytest.mark.parametrize("text,packed", [
        (V4, socket.inet_pton(socket.AF_INET, V4)),
        (V6, socket.inet_pton(socket.AF_INET6, V6)),
    ])
    def test_cap_in_text_and_packed_forms(self, text, packed):
        table = ConnTable(100, max_per_ip=3)
        assert table.max_per_ip == 3
        cids = [table.add(1, text, now=0), table.add(2, packed, now=0), table.add(3, text, now=0)]
        assert table.ip_count(text) == 3
        assert table.ip_count(packed) == 3
        for form in (text, packed):
            with pytest.raises(PerIPLimitExceeded):
                table.add(4, form, now=0)
        assert len(table) == 3
        assert table.ip_count(text) == 3
        other = table.add(5, "203.0.113.9", now=0)  # another address is not affected
        table.remove(cids[1])
        assert table.ip_count(text) == 2
        cids[1] = table.add(6, packed, now=0)
        assert table.ip_count(text) == 3
        for cid in cids + [other]:
            table.remove(cid)
        assert table.ip_count(text) == 0
        assert table.ips() == 0

    def test_equivalent_ipv6_spellings_share_a_count(self):
        table = ConnTable(10, max_per_ip=2)
        table.add(1, "2001:db8::42", now=0)
        table.add(2, "2001:0DB8:0000:0000:0000:0000:0000:0042", now=0)
        with pytest.raises(PerIPLimitExceeded):
            table.add(3, "2001:db8:0:0::42", now=0)
        assert table.ip_count("2001:db8::42") == 2

    def test_ipv4_and_its_ipv4_mapped_ipv6_form_share_a_count(self):
        # Keyed by the 16-byte form: a dual-stack socket reports ::ffff:a.b.c.d.
        table = ConnTable(10, max_per_ip=2)
        table.add(1, "192.0.2.1", now=0)
        table.add(2, "::ffff:192.0.2.1", now=0)
        with pytest.raises(PerIPLimitExceeded):
            table.add(3, socket.inet_pton(socket.AF_INET, "192.0.2.1"), now=0)
        assert table.ip_count("::ffff:192.0.2.1") == 2
        assert table.ips() == 1

    def test_ipv4_and_ipv6_are_distinct(self):
        table = ConnTable(10, max_per_ip=1)
        table.add(1, "0.0.0.1", now=0)
        table.add(2, "::1", now=0)  # not the same address as 0.0.0.1
        table.add(3, "1.0.0.0", now=0)
        assert table.ips() == 3

    def test_ips_counts_distinct_addresses(self):
        table = ConnTable(50)
        addresses = ["10.0.0.1", "10.0.0.2", "::1", "fe80::1", "2001:db8::1"]
        cids = {a: [table.add(i, a, now=0) for i in range(3)] for a in addresses}
        assert table.ips() == 5
        for cid in cids["::1"]:
            table.remove(cid)
        assert table.ips() == 4
        assert table.ip_count("::1") == 0
        table.remove(cids["10.0.0.1"][0])
        assert table.ips() == 4
        assert table.ip_count("10.0.0.1") == 2
        assert table.ip_count("192.0.2.200") == 0  # never seen

    def test_many_addresses_with_collisions(self):
        table = ConnTable(4096, max_per_ip=2)
        cids = []
        for i in range(2048):
            ip = f"10.{i >> 8}.{i & 255}.1" if i % 2 else f"2001:db8::{i:x}"
            cids.append(table.add(i, ip, now=0))
            cids.append(table.add(i, ip, now=0))
        assert table.ips() == 2048
        assert len(table) == 4096
        for cid in cids[::4]:
            table.remove(cid)
        assert table.ips() == 2048
        for cid in cids[1::4]:
            table.remove(cid)
        assert table.ips() == 1024
        for i in range(2048):
            ip = f"10.{i >> 8}.{i & 255}.1" if i % 2 else f"2001:db8::{i:x}"
            assert table.ip_count(ip) == (0 if i % 2 == 0 else 2)
        for cid in cids[2::4] + cids[3::4]:
            table.remove(cid)
        assert table.ips() == 0 and len(table) == 0


class TestInfo:
    def test_fields(self):
        table = ConnTable(4)
        cid = table.add(42, "2001:db8::7", 51234, now=1000)
        info = table.info(cid)
        assert info["fd"] == 42
        assert info["peer"] == ("2001:db8::7", 51234)
        assert info["last_message"] == 1000
        assert info["last_receive"] == 1000
        assert info["bytes_in"] == info["bytes_out"] == 0
        assert info["messages_in"] == info["messages_out"] == 0
        assert info["inflight"] == 0
        assert info["ping_outstanding"] is False
        assert "state" in info
        v4 = table.add(43, socket.inet_pton(socket.AF_INET, "203.0.113.5"), 80, now=0)
        assert table.info(v4)["peer"] == ("203.0.113.5", 80)

    @pytest.mark.parametrize("port", [0, 1, 65535])
    def test_port_edges(self, port):
        table = ConnTable(2)
        cid = table.add(1, "10.0.0.1", port, now=0)
        assert table.info(cid)["peer"] == ("10.0.0.1", port)

    @pytest.mark.parametrize("port", [-1, 65536, 70000])
    def test_port_out_of_range_is_refused_not_wrapped(self, port):
        # A peer port is 0..65535; a wrapped value would make info() report another peer.
        table = ConnTable(2)
        with pytest.raises((ValueError, OverflowError)):
            table.add(1, "10.0.0.1", port, now=0)
        assert len(table) == 0
        assert table.ip_count("10.0.0.1") == 0

    def test_count_traffic_accumulates(self):
        table = ConnTable(2)
        cid = table.add(1, "10.0.0.1", now=0)
        table.count_traffic(cid, bytes_in=100)
        table.count_traffic(cid, bytes_in=5, bytes_out=7, msgs_in=1, msgs_out=2)
        table.count_traffic(cid, 1 << 33, 1 << 34, 3, 4)
        info = table.info(cid)
        assert info["bytes_in"] == 105 + (1 << 33)
        assert info["bytes_out"] == 7 + (1 << 34)
        assert info["messages_in"] == 4
        assert info["messages_out"] == 6

    def test_set_inflight(self):
        table = ConnTable(2)
        cid = table.add(1, "10.0.0.1", now=0)
        table.set_inflight(cid, 17)
        assert table.info(cid)["inflight"] == 17
        table.set_inflight(cid, 0)
        assert table.info(cid)["inflight"] == 0

    def test_touch(self):
        table = ConnTable(2)
        cid = table.add(1, "10.0.0.1", now=100)
        table.touch(cid, 200, message=False)
        info = table.info(cid)
        assert (info["last_message"], info["last_receive"]) == (100, 200)
        table.touch(cid, 300)
        info = table.info(cid)
        assert (info["last_message"], info["last_receive"]) == (300, 300)

    @pytest.mark.parametrize("message", [False, True])
    def test_touch_clears_an_outstanding_ping(self, message):
        table = ConnTable(2)
        cid = table.add(1, "10.0.0.1", now=0)
        table.mark_ping_sent(cid, 50)
        assert table.info(cid)["ping_outstanding"] is True
        table.touch(cid, 60, message=message)
        assert table.info(cid)["ping_outstanding"] is False
        assert table.scan(now=10_000, pong_timeout_ms=100) == ([], [], [])

    def test_defaults_use_the_monotonic_clock(self):
        table = ConnTable(2)
        before = monotonic_ms()
        cid = table.add(1, "10.0.0.1")
        after = monotonic_ms()
        stamp = table.info(cid)["last_message"]
        assert (stamp - before) % WRAP <= (after - before) % WRAP
        table.touch(cid)
        assert (table.info(cid)["last_receive"] - before) % WRAP < 60_000
        assert table.scan(idle_timeout_ms=3_600_000, ping_interval_ms=3_600_000,
                          pong_timeout_ms=3_600_000) == ([], [], [])


class TestMonotonicMs:
    def test_is_a_uint32_that_follows_clock_monotonic(self):
        a = monotonic_ms()
        mono = int(time.monotonic() * 1000) % WRAP
        b = monotonic_ms()
        assert isinstance(a, int) and 0 <= a < WRAP
        assert (b - a) % WRAP < 1000
        assert min((mono - a) % WRAP, (a - mono) % WRAP) < 1000


class TestScan:
    """idle: no whole message for idle_timeout_ms; ping_due: nothing received for
    ping_interval_ms and no ping outstanding (marked sent by the scan); dead: a ping
    outstanding for pong_timeout_ms; 0 disables a check."""

    def test_nothing_enabled_nothing_reported(self):
        table = ConnTable(4)
        table.add(1, "10.0.0.1", now=0)
        assert table.scan(now=1 << 31) == ([], [], [])

    def test_idle(self):
        table = ConnTable(4)
        a = table.add(1, "10.0.0.1", now=1000)
        b = table.add(2, "10.0.0.2", now=1000)
        table.touch(b, 5000)  # a whole message
        table.touch(a, 5500, message=False)  # bytes only: does not reset idleness
        assert table.scan(now=1000 + 9_999, idle_timeout_ms=10_000) == ([], [], [])
        idle, ping, dead = table.scan(now=1000 + 10_001, idle_timeout_ms=10_000)
        assert (idle, ping, dead) == ([a], [], [])
        idle, _, _ = table.scan(now=5000 + 10_001, idle_timeout_ms=10_000)
        assert sorted(idle) == sorted([a, b])
        # Reporting is not removal: the scan changes nothing about idleness.
        assert len(table) == 2

    def test_ping_due_marks_the_ping_sent(self):
        table = ConnTable(4)
        a = table.add(1, "10.0.0.1", now=0)
        b = table.add(2, "10.0.0.2", now=0)
        table.touch(b, 2000, message=False)  # any received bytes postpone the ping
        assert table.scan(now=2999, ping_interval_ms=3000) == ([], [], [])
        assert table.scan(now=3001, ping_interval_ms=3000) == ([], [a], [])
        assert table.info(a)["ping_outstanding"] is True
        assert table.info(b)["ping_outstanding"] is False
        # Outstanding: not due again.
        assert table.scan(now=5001, ping_interval_ms=3000) == ([], [b], [])
        assert table.scan(now=9000, ping_interval_ms=3000) == ([], [], [])

    def test_dead_after_pong_timeout(self):
        table = ConnTable(4)
        a = table.add(1, "10.0.0.1", now=0)
        b = table.add(2, "10.0.0.2", now=0)
        _, ping, _ = table.scan(now=30_001, ping_interval_ms=30_000, pong_timeout_ms=10_000)
        assert sorted(ping) == sorted([a, b])
        table.touch(b, 31_000, message=False)  # b answered (a pong is received bytes)
        assert table.scan(now=40_000, ping_interval_ms=30_000, pong_timeout_ms=10_000) == ([], [], [])
        assert table.scan(now=40_002, ping_interval_ms=30_000, pong_timeout_ms=10_000) == ([], [], [a])
        # Still outstanding, still dead: the caller drops it.
        assert table.scan(now=40_003, pong_timeout_ms=10_000) == ([], [], [a])
        assert table.scan(now=40_003, ping_interval_ms=30_000) == ([], [], [])

    def test_mark_ping_sent_counts_for_pong_timeout(self):
        table = ConnTable(4)
        a = table.add(1, "10.0.0.1", now=0)
        table.mark_ping_sent(a, 100)
        assert table.info(a)["ping_outstanding"] is True
        assert table.scan(now=100 + 499, pong_timeout_ms=500) == ([], [], [])
        assert table.scan(now=100 + 501, pong_timeout_ms=500) == ([], [], [a])

    def test_zero_disables_each_check(self):
        table = ConnTable(4)
        a = table.add(1, "10.0.0.1", now=0)
        b = table.add(2, "10.0.0.2", now=0)
        table.mark_ping_sent(b, 0)
        later = 1 << 30
        assert table.scan(now=later, idle_timeout_ms=0, ping_interval_ms=0, pong_timeout_ms=0) == ([], [], [])
        assert table.scan(now=later, pong_timeout_ms=1000) == ([], [], [b])
        assert table.scan(now=later, ping_interval_ms=1000) == ([], [a], [])
        idle, ping, dead = table.scan(now=later, idle_timeout_ms=1000)
        assert sorted(idle) == sorted([a, b]) and ping == [] and dead == []

    def test_wrap_around_idle_and_ping(self):
        table = ConnTable(8)
        near = WRAP - 500
        a = table.add(1, "10.0.0.1", now=near)  # 500 ms before the wrap
        b = table.add(2, "10.0.0.2", now=WRAP - 1)
        c = table.add(3, "10.0.0.3", now=near)
        table.touch(c, 100)  # after the wrap
        now = 1000  # 1500 ms after a's stamp, 1001 after b's, 900 after c's
        assert table.scan(now=now, idle_timeout_ms=1600) == ([], [], [])
        assert table.scan(now=now, idle_timeout_ms=1400) == ([a], [], [])
        idle, _, _ = table.scan(now=now, idle_timeout_ms=950)
        assert sorted(idle) == sorted([a, b])
        assert table.scan(now=now, ping_interval_ms=1600) == ([], [], [])
        assert table.scan(now=now, ping_interval_ms=1200) == ([], [a], [])
        assert table.info(a)["ping_outstanding"] is True
        assert table.scan(now=now + 299, pong_timeout_ms=300) == ([], [], [])
        assert table.scan(now=now + 301, pong_timeout_ms=300) == ([], [], [a])

    def test_wrap_around_ping_and_pong(self):
        table = ConnTable(2)
        a = table.add(1, "10.0.0.1", now=WRAP - 300)
        assert table.scan(now=WRAP - 1, ping_interval_ms=1000) == ([], [], [])
        assert table.scan(now=699, ping_interval_ms=1000) == ([], [], [])  # 999 ms
        assert table.scan(now=701, ping_interval_ms=1000) == ([], [a], [])  # 1001 ms
        table.touch(a, 800, message=False)
        table.mark_ping_sent(a, WRAP - 100)
        assert table.scan(now=WRAP - 1, pong_timeout_ms=200) == ([], [], [])
        assert table.scan(now=99, pong_timeout_ms=200) == ([], [], [])  # 199 ms
        assert table.scan(now=101, pong_timeout_ms=200) == ([], [], [a])  # 201 ms

    def test_stamps_at_the_top_of_the_range(self):
        table = ConnTable(2)
        a = table.add(1, "10.0.0.1", now=WRAP - 1)
        assert table.info(a)["last_message"] == WRAP - 1
        assert table.scan(now=WRAP - 1, idle_timeout_ms=1) == ([], [], [])
        assert table.scan(now=1, idle_timeout_ms=1) == ([a], [], [])

    def test_scan_over_100000_slots(self):
        n = 100_000
        table = ConnTable(n, max_per_ip=n)
        base = WRAP - 20_000  # the stamps cross the wrap
        stamp = {}
        cids = []
        for i in range(n):
            t = (base + (i % 1000) * 37) % WRAP
            cid = table.add(i, f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", now=t)
            cids.append(cid)
            stamp[cid] = t
        assert len(table) == n
        removed = set(cids[::7]) | {cids[0], cids[-1]}
        for cid in removed:
            table.remove(cid)
        live = [c for c in cids if c not in removed]
        pinged = set(live[::11])
        for cid in pinged:
            table.mark_ping_sent(cid, (base + 30_000) % WRAP)
        now = (base + 40_000) % WRAP
        idle_timeout = 28_501  # between two stamps: no connection sits on the boundary
        idle, ping, dead = table.scan(now=now, idle_timeout_ms=idle_timeout)
        expected_idle = {c for c in live if (now - stamp[c]) % WRAP >= idle_timeout}
        assert 0 < len(expected_idle) < len(live)
        assert set(idle) == expected_idle and len(idle) == len(expected_idle)
        assert ping == [] and dead == []
        _, _, dead = table.scan(now=now, pong_timeout_ms=9_999)
        assert set(dead) == pinged and len(dead) == len(pinged)
        _, _, dead = table.scan(now=now, pong_timeout_ms=10_001)
        assert dead == []
        ping_interval = 25_001
        _, ping, _ = table.scan(now=now, ping_interval_ms=ping_interval)
        expected_ping = {c for c in live if c not in pinged and (now - stamp[c]) % WRAP >= ping_interval}
        assert 0 < len(expected_ping)
        assert set(ping) == expected_ping and len(ping) == len(expected_ping)
        _, ping, _ = table.scan(now=now, ping_interval_ms=ping_interval)
        assert ping == []  # all marked by the previous scan
        assert len(table) == len(live)

    def test_scan_finds_a_connection_in_the_last_slot_alone(self):
        n = 1000
        table = ConnTable(n)
        cids = [table.add(i, "10.0.0.1" if i < 200 else f"10.0.{i >> 8}.{i & 255}", now=0) for i in range(n)]
        for cid in cids[:-1]:
            table.remove(cid)
        assert table.scan(now=100, idle_timeout_ms=50) == ([cids[-1]], [], [])


class TableMachine(RuleBasedStateMachine):
    """Random adds and removes against a model of per-IP counts and capacity."""

    CAPACITY = 6
    MAX_PER_IP = 2
    ADDRESSES = ["10.0.0.1", "10.0.0.2", "::1", "2001:db8::1", "::ffff:10.0.0.3", "10.0.0.3",
                 "fe80::1", "192.0.2.1", "192.0.2.2", "2001:db8::2"]

    def __init__(self) -> None:
        super().__init__()
        self.table = ConnTable(self.CAPACITY, max_per_ip=self.MAX_PER_IP)
        self.live: dict[int, tuple[int, str]] = {}
        self.dead: set[int] = set()
        self.next_fd = 0

    @staticmethod
    def key(ip: str) -> bytes:
        try:
            return b"\0" * 10 + b"\xff\xff" + socket.inet_pton(socket.AF_INET, ip)
        except OSError:
            return socket.inet_pton(socket.AF_INET6, ip)

    def count(self, ip: str) -> int:
        return sum(1 for _, other in self.live.values() if self.key(other) == self.key(ip))

    @rule(ip=st.sampled_from(ADDRESSES))
    def add(self, ip):
        self.next_fd += 1
        full = len(self.live) >= self.CAPACITY
        capped = self.count(ip) >= self.MAX_PER_IP
        if full or capped:
            expected = tuple(e for e, hit in ((TableFull, full), (PerIPLimitExceeded, capped)) if hit)
            with pytest.raises(expected):
                self.table.add(self.next_fd, ip, now=0)
            return
        cid = self.table.add(self.next_fd, ip, now=0)
        assert cid not in self.live and cid not in self.dead
        self.live[cid] = (self.next_fd, ip)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def remove(self, data):
        cid = data.draw(st.sampled_from(sorted(self.live)))
        fd, _ = self.live.pop(cid)
        assert self.table.remove(cid) == fd
        self.dead.add(cid)

    @precondition(lambda self: self.dead)
    @rule(data=st.data())
    def stale(self, data):
        cid = data.draw(st.sampled_from(sorted(self.dead)))
        assert cid not in self.table
        with pytest.raises(KeyError):
            self.table.remove(cid)

    @invariant()
    def consistent(self):
        assert len(self.table) == len(self.live)
        for ip in self.ADDRESSES:
            assert self.table.ip_count(ip) == self.count(ip)
        assert self.table.ips() == len({self.key(ip) for _, ip in self.live.values()})
        for cid in self.live:
            assert cid in self.table


TableMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestTableMachine = TableMachine.TestCase
