"""ConnTable: slots and generations, per-IP caps, info. (Timeouts: Engine.sweep in test_engine.py.)"""
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
                     lambda: table.set_inflight(old, 1),
                     lambda: table.mark_ping_sent(old, 0)):
            with pytest.raises(KeyError):
                call()
        # The stale id touched nothing of the new connection.
        info = table.info(new)
        assert info["fd"] == 4
        assert info["peer"] == ("10.1.1.2", 2)
        assert info["inflight"] == 0
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

    def test_defaults_use_the_monotonic_clock(self):
        table = ConnTable(2)
        before = monotonic_ms()
        cid = table.add(1, "10.0.0.1")
        after = monotonic_ms()
        stamp = table.info(cid)["last_message"]
        assert (stamp - before) % WRAP <= (after - before) % WRAP
        table.touch(cid)
        assert (table.info(cid)["last_receive"] - before) % WRAP < 60_000


class TestMonotonicMs:
    def test_is_a_uint32_that_follows_clock_monotonic(self):
        a = monotonic_ms()
        mono = int(time.monotonic() * 1000) % WRAP
        b = monotonic_ms()
        assert isinstance(a, int) and 0 <= a < WRAP
        assert (b - a) % WRAP < 1000
        assert min((mono - a) % WRAP, (a - mono) % WRAP) < 1000
