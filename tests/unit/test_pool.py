"""BufferPool: size classes, the byte ceiling, lazy arenas, handles, trim, stats."""
from __future__ import annotations

import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fastrpc import _core
from fastrpc._core import BufferPool
from fastrpc.errors import FastRPCError, InvalidBlock, PoolExhausted
from fastrpc.limits import Limits

KiB = 1024
MiB = 1024 * KiB
DEFAULT_CLASSES = (1 * KiB, 8 * KiB, 64 * KiB, 1 * MiB)


def fill(handle: int, size: int) -> bytes:
    """Bytes that identify one block."""
    rng = random.Random(handle)
    return rng.randbytes(size)


class TestDefaults:
    def test_module_constants(self):
        assert _core.DEFAULT_SIZE_CLASSES == DEFAULT_CLASSES
        assert _core.DEFAULT_POOL_LIMIT == 64 * MiB
        assert _core.DEFAULT_ARENA_SIZE == 256 * KiB
        assert _core.MAX_CLASSES == 8

    def test_default_pool(self):
        pool = BufferPool()
        assert pool.size_classes == DEFAULT_CLASSES
        assert pool.limit == 64 * MiB
        assert pool.bytes_reserved == 0
        assert pool.bytes_in_use == 0

    def test_limits_default_classes_match_the_pool(self):
        assert Limits().pool_size_classes == _core.DEFAULT_SIZE_CLASSES
        assert Limits().max_message_size <= max(_core.DEFAULT_SIZE_CLASSES)

    def test_exception_types(self):
        assert issubclass(PoolExhausted, MemoryError) and issubclass(PoolExhausted, FastRPCError)
        assert issubclass(InvalidBlock, ValueError) and issubclass(InvalidBlock, FastRPCError)


class TestConstructor:
    @pytest.mark.parametrize("classes", [
        (1024, 1024), (2048, 1024), (16, 32, 32), (64, 48), (32, 16, 48),
    ])
    def test_classes_must_strictly_increase(self, classes):
        with pytest.raises(ValueError):
            BufferPool(classes, limit=MiB)

    @pytest.mark.parametrize("classes", [(1000,), (8,), (16, 24), (1024, 8190), (17,)])
    def test_classes_must_be_multiples_of_16(self, classes):
        with pytest.raises(ValueError):
            BufferPool(classes, limit=MiB)

    def test_at_most_8_classes(self):
        eight = tuple(16 << i for i in range(8))
        pool = BufferPool(eight, limit=MiB)
        assert pool.size_classes == eight
        with pytest.raises(ValueError):
            BufferPool(tuple(16 << i for i in range(9)), limit=MiB)

    def test_any_sequence_of_classes(self):
        assert BufferPool([16, 64], limit=4096).size_classes == (16, 64)
        assert BufferPool(range(16, 80, 16), limit=4096).size_classes == (16, 32, 48, 64)

    def test_fresh_pool_reserves_nothing(self):
        pool = BufferPool((16, 1024, MiB), limit=8 * MiB, arena_size=64 * KiB)
        assert pool.bytes_reserved == 0
        assert pool.bytes_in_use == 0
        assert pool.high_water == 0
        assert pool.failed_acquires == 0
        assert pool.limit == 8 * MiB
        assert pool.size_classes == (16, 1024, MiB)


class TestAcquire:
    @pytest.mark.parametrize("size,block", [
        (0, 1 * KiB), (1, 1 * KiB), (1023, 1 * KiB), (1024, 1 * KiB), (1025, 8 * KiB), (8192, 8 * KiB),
        (8193, 64 * KiB), (65536, 64 * KiB), (65537, 1 * MiB), (MiB, 1 * MiB),
    ])
    def test_smallest_fitting_class(self, size, block):
        pool = BufferPool()
        h = pool.acquire(size)
        assert isinstance(h, int)
        assert pool.block_size(h) == block
        assert pool.bytes_in_use == block
        pool.release(h)
        assert pool.bytes_in_use == 0

    @pytest.mark.parametrize("size", [MiB + 1, 2 * MiB, 1 << 40])
    def test_over_the_largest_class_is_a_value_error(self, size):
        pool = BufferPool()
        with pytest.raises(ValueError) as err:
            pool.acquire(size)
        assert not isinstance(err.value, PoolExhausted)
        assert pool.failed_acquires == 0
        assert pool.bytes_reserved == 0
        assert pool.bytes_in_use == 0

    def test_arenas_are_reserved_lazily_per_class(self):
        pool = BufferPool((1024, 8192, MiB), limit=16 * MiB, arena_size=256 * KiB)
        h = pool.acquire(100)
        assert pool.bytes_reserved == 256 * KiB  # one arena of the 1 KiB class
        more = [pool.acquire(1024) for _ in range(255)]  # the rest of that arena
        assert pool.bytes_reserved == 256 * KiB
        more.append(pool.acquire(1))  # a second arena
        assert pool.bytes_reserved == 512 * KiB
        big = pool.acquire(MiB)  # a class over the arena size reserves one block
        assert pool.bytes_reserved == 512 * KiB + MiB
        mid = pool.acquire(5000)
        assert pool.bytes_reserved == 768 * KiB + MiB
        for handle in [h, big, mid] + more:
            pool.release(handle)
        assert pool.bytes_in_use == 0

    def test_exhaustion_raises_and_counts(self):
        pool = BufferPool((16,), limit=1024, arena_size=256)
        handles = [pool.acquire(16) for _ in range(64)]  # exactly the ceiling
        assert pool.bytes_reserved == 1024
        for expected_failures in (1, 2, 3):
            with pytest.raises(PoolExhausted):
                pool.acquire(1)
            assert pool.failed_acquires == expected_failures
        assert pool.bytes_in_use == 1024
        assert pool.bytes_reserved == 1024
        pool.release(handles.pop())
        handles.append(pool.acquire(16))  # a freed block is reusable at the ceiling
        assert pool.failed_acquires == 3
        for h in handles:
            pool.release(h)
        assert pool.bytes_in_use == 0

    def test_exhaustion_of_one_class_while_others_have_room(self):
        pool = BufferPool((16, 512), limit=1024, arena_size=512)
        small = pool.acquire(16)  # reserves a 512-byte arena for the 16-byte class
        big = pool.acquire(512)  # reserves one 512-byte block: the ceiling is reached
        assert pool.bytes_reserved == 1024
        with pytest.raises(PoolExhausted):
            pool.acquire(100)
        assert pool.failed_acquires == 1
        extra = [pool.acquire(16) for _ in range(31)]  # the small arena still has room
        for h in [small, big] + extra:
            pool.release(h)
        assert pool.bytes_in_use == 0

    @pytest.mark.parametrize("seed", range(5))
    def test_ceiling_is_never_exceeded(self, seed):
        rng = random.Random(seed)
        limit = 3 * MiB + 12345
        pool = BufferPool((16, 1024, 8192, 65536, MiB), limit=limit, arena_size=128 * KiB)
        live = []
        failures = 0
        for _ in range(5000):
            if live and rng.random() < 0.35:
                pool.release(live.pop(rng.randrange(len(live))))
            else:
                size = rng.choice([1, 16, 17, 1000, 5000, 60000, 500_000, MiB])
                try:
                    live.append(pool.acquire(size))
                except PoolExhausted:
                    failures += 1
            assert pool.bytes_reserved <= limit
            assert pool.bytes_in_use <= pool.bytes_reserved
        assert failures > 0, "the workload should reach the ceiling"
        assert pool.failed_acquires == failures
        assert pool.bytes_in_use == sum(pool.block_size(h) for h in live)
        for h in live:
            pool.release(h)
        assert pool.bytes_in_use == 0

    def test_live_handles_are_distinct_and_blocks_do_not_overlap(self):
        pool = BufferPool((16, 64, 4096), limit=32 * MiB, arena_size=4096)
        rng = random.Random(1)
        live = {}
        for _ in range(3000):
            h = pool.acquire(rng.choice([1, 16, 40, 64, 1000, 4096]))
            assert h not in live
            live[h] = fill(h, pool.block_size(h))
            pool.write(h, 0, live[h])
        for h, content in live.items():
            assert pool.read(h, 0, len(content)) == content
        for h in live:
            pool.release(h)
        assert pool.bytes_in_use == 0


class TestRelease:
    def test_reuse_after_release(self):
        pool = BufferPool((64,), limit=64, arena_size=64)  # room for one block
        h = pool.acquire(10)
        pool.release(h)
        h2 = pool.acquire(64)  # must reuse the block: nothing else fits under the ceiling
        assert pool.bytes_reserved == 64
        assert pool.failed_acquires == 0
        pool.release(h2)
        assert pool.bytes_in_use == 0

    def test_released_blocks_are_reused_before_reserving(self):
        pool = BufferPool()
        handles = [pool.acquire(1000) for _ in range(10)]
        reserved = pool.bytes_reserved
        for h in handles:
            pool.release(h)
        for _ in range(3):
            again = [pool.acquire(1000) for _ in range(10)]
            assert pool.bytes_reserved == reserved
            for h in again:
                pool.release(h)
        assert pool.bytes_in_use == 0

    def test_double_release(self):
        pool = BufferPool()
        h = pool.acquire(100)
        other = pool.acquire(100)
        pool.release(h)
        with pytest.raises(InvalidBlock):
            pool.release(h)
        assert pool.bytes_in_use == 1024  # the failed release changed nothing
        pool.release(other)
        with pytest.raises(InvalidBlock):
            pool.release(other)
        assert pool.bytes_in_use == 0

    def test_handle_from_another_pool(self):
        a, b = BufferPool(), BufferPool()
        h = a.acquire(100)
        with pytest.raises(InvalidBlock):
            b.release(h)
        with pytest.raises(InvalidBlock):
            b.read(h, 0, 1)
        assert b.bytes_in_use == 0
        a.release(h)
        assert a.bytes_in_use == 0

    def test_handles_never_handed_out(self):
        pool = BufferPool()
        handles = {pool.acquire(s) for s in (1, 2000, 9000, 70000)}
        candidates = set()
        for h in handles:
            candidates |= {h + 1, h - 1, h + 2, h ^ (1 << 12), h ^ (1 << 20), h + (1 << 29), h ^ (1 << 31)}
        for bad in sorted(candidates - handles):
            if bad <= 0:
                continue
            with pytest.raises(InvalidBlock):
                pool.release(bad)
        assert pool.bytes_in_use == 1024 + 8192 + 65536 + MiB
        for h in handles:
            pool.release(h)
        assert pool.bytes_in_use == 0

    @pytest.mark.parametrize("garbage", [0, -1, -(1 << 40), 1 << 32, 1 << 64, 2**200, "1", None, 1.5, b"\x01", []])
    def test_garbage_handles(self, garbage):
        pool = BufferPool()
        h = pool.acquire(1)
        with pytest.raises(InvalidBlock):
            pool.release(garbage)
        pool.release(h)
        assert pool.bytes_in_use == 0

    def test_released_handle_is_not_live(self):
        pool = BufferPool()
        h = pool.acquire(10)
        pool.release(h)
        with pytest.raises(InvalidBlock):
            pool.block_size(h)
        with pytest.raises(InvalidBlock):
            pool.write(h, 0, b"x")
        with pytest.raises(InvalidBlock):
            pool.read(h, 0, 1)
        assert pool.bytes_in_use == 0


class TestReadWrite:
    @pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
    def test_round_trip(self, kind):
        pool = BufferPool()
        h = pool.acquire(1024)
        data = bytes(range(256)) * 4
        payload = {"bytes": data, "bytearray": bytearray(data), "memoryview": memoryview(b"." + data)[1:]}[kind]
        pool.write(h, 0, payload)
        assert pool.read(h, 0, 1024) == data
        pool.write(h, 1000, payload[:24])
        assert pool.read(h, 1000, 24) == data[:24]
        assert pool.read(h, 0, 1000) == data[:1000]
        assert pool.read(h, 5, 0) == b""
        assert type(pool.read(h, 0, 3)) is bytes
        pool.release(h)
        assert pool.bytes_in_use == 0

    def test_bounds(self):
        pool = BufferPool()
        h = pool.acquire(100)  # a 1 KiB block
        size = pool.block_size(h)
        pool.write(h, size - 4, b"abcd")
        assert pool.read(h, size - 4, 4) == b"abcd"
        pool.write(h, size, b"")
        assert pool.read(h, size, 0) == b""
        for offset, data in ((size - 3, b"abcd"), (size + 1, b""), (-1, b"a"), (0, b"x" * (size + 1))):
            with pytest.raises(IndexError):
                pool.write(h, offset, data)
        for offset, n in ((size - 3, 4), (size + 1, 0), (-1, 1), (0, size + 1), (0, -1)):
            with pytest.raises(IndexError):
                pool.read(h, offset, n)
        assert pool.read(h, size - 4, 4) == b"abcd"  # refused writes changed nothing
        pool.release(h)
        assert pool.bytes_in_use == 0

    def test_block_contents_survive_other_traffic(self):
        pool = BufferPool((64, 1024), limit=MiB, arena_size=4096)
        keep = pool.acquire(64)
        pool.write(keep, 0, b"K" * 64)
        for _ in range(200):
            tmp = [pool.acquire(n) for n in (1, 64, 1024)]
            for t in tmp:
                pool.write(t, 0, b"\xff" * pool.block_size(t))
                pool.release(t)
        assert pool.read(keep, 0, 64) == b"K" * 64
        pool.release(keep)
        assert pool.bytes_in_use == 0


class TestTrim:
    def test_trim_frees_only_empty_arenas(self):
        pool = BufferPool((1024,), limit=4 * MiB, arena_size=16 * KiB)  # 16 blocks per arena
        handles = [pool.acquire(1024) for _ in range(48)]  # three arenas
        assert pool.bytes_reserved == 48 * KiB
        keep = handles[40]  # in the third arena, whatever the order blocks come in
        pool.write(keep, 0, b"still here")
        for h in handles:
            if h != keep:
                pool.release(h)
        freed = pool.trim()
        assert freed == 32 * KiB
        assert pool.bytes_reserved == 16 * KiB
        assert pool.read(keep, 0, 10) == b"still here"
        assert pool.trim() == 0
        again = [pool.acquire(1) for _ in range(40)]  # reserves anew after the trim
        assert pool.bytes_reserved == 48 * KiB
        for h in again + [keep]:
            pool.release(h)
        assert pool.bytes_in_use == 0
        assert pool.trim() == 48 * KiB
        assert pool.bytes_reserved == 0

    def test_trim_on_a_fresh_or_busy_pool(self):
        pool = BufferPool()
        assert pool.trim() == 0
        h = pool.acquire(1)
        assert pool.trim() == 0
        assert pool.bytes_reserved == 256 * KiB
        pool.release(h)
        assert pool.trim() == 256 * KiB
        assert pool.bytes_reserved == 0
        assert pool.bytes_in_use == 0

    def test_trim_lets_other_classes_use_the_memory(self):
        pool = BufferPool((16, 1024), limit=2048, arena_size=1024)
        small = [pool.acquire(16) for _ in range(128)]  # both arenas of the ceiling
        with pytest.raises(PoolExhausted):
            pool.acquire(1024)
        for h in small:
            pool.release(h)
        with pytest.raises(PoolExhausted):
            pool.acquire(1024)  # still reserved by the small class
        assert pool.trim() == 2048
        big = pool.acquire(1024)
        pool.release(big)
        assert pool.bytes_in_use == 0

    def test_handles_of_trimmed_arenas_are_invalid(self):
        pool = BufferPool()
        h = pool.acquire(1)
        pool.release(h)
        pool.trim()
        with pytest.raises(InvalidBlock):
            pool.release(h)
        assert pool.bytes_in_use == 0


class TestStats:
    def test_stats_fields(self):
        pool = BufferPool((16, 1024), limit=64 * KiB, arena_size=4096)
        a = pool.acquire(1)
        b = pool.acquire(16)
        c = pool.acquire(1000)
        stats = pool.stats()
        assert stats == {
            "bytes_reserved": 8192,
            "bytes_in_use": 16 + 16 + 1024,
            "high_water": 16 + 16 + 1024,
            "failed_acquires": 0,
            "limit": 64 * KiB,
            "size_classes": (16, 1024),
            "blocks_in_use": (2, 1),
            # 4 KiB arenas: 256 blocks of 16 B, 4 of 1 KiB; 17 arena slots per class
            # (64 KiB / 4 KiB + 1), 10 bytes each, plus a state byte per block.
            "classes": [
                {"block_size": 16, "blocks_total": 256, "blocks_in_use": 2, "arenas": 1,
                 "bytes_reserved": 4096, "overhead_bytes": 256 + 17 * 10},
                {"block_size": 1024, "blocks_total": 4, "blocks_in_use": 1, "arenas": 1,
                 "bytes_reserved": 4096, "overhead_bytes": 4 + 17 * 10},
            ],
        }
        pool.release(c)
        pool.release(a)
        stats = pool.stats()
        assert stats["bytes_in_use"] == 16
        assert stats["high_water"] == 16 + 16 + 1024
        assert stats["blocks_in_use"] == (1, 0)
        assert stats["bytes_reserved"] == pool.bytes_reserved == 8192
        pool.release(b)
        assert pool.stats()["blocks_in_use"] == (0, 0)
        assert pool.bytes_in_use == 0
        assert pool.trim() == 8192
        assert [(c["arenas"], c["blocks_total"], c["bytes_reserved"], c["overhead_bytes"])
                for c in pool.stats()["classes"]] == [(0, 0, 0, 170), (0, 0, 0, 170)]

    def test_class_figures_add_up(self):
        """Per class: blocks_total × block_size == bytes_reserved, and the classes sum
        to the pool's totals, through growth, releases and trims."""
        pool = BufferPool((64, 1024, 8192), limit=8 << 20, arena_size=16 * KiB)
        held = []
        for step in range(300):
            held.append(pool.acquire((step * 37) % 8000 + 1))
            if step % 3 == 2:
                pool.release(held.pop(step % len(held)))
            if step % 50 == 49:
                pool.trim()
            st = pool.stats()
            for c in st["classes"]:
                assert c["blocks_total"] * c["block_size"] == c["bytes_reserved"]
                assert c["blocks_in_use"] <= c["blocks_total"]
            assert sum(c["bytes_reserved"] for c in st["classes"]) == st["bytes_reserved"]
            assert sum(c["blocks_in_use"] * c["block_size"] for c in st["classes"]) == st["bytes_in_use"]
            assert tuple(c["blocks_in_use"] for c in st["classes"]) == st["blocks_in_use"]
        for h in held:
            pool.release(h)

    def test_high_water_and_failed_acquires(self):
        pool = BufferPool((1024,), limit=4096, arena_size=1024)
        hs = [pool.acquire(1) for _ in range(4)]
        with pytest.raises(PoolExhausted):
            pool.acquire(1)
        for h in hs:
            pool.release(h)
        h = pool.acquire(1)
        assert pool.high_water == 4096
        assert pool.failed_acquires == 1
        assert pool.stats()["failed_acquires"] == 1
        pool.release(h)
        assert pool.high_water == 4096
        assert pool.bytes_in_use == 0


class PoolMachine(RuleBasedStateMachine):
    """Random acquire / release / write / trim against a model of what must hold."""

    CLASSES = (16, 64, 256, 4096)
    LIMIT = 3 * 4096 + 512

    def __init__(self) -> None:
        super().__init__()
        self.pool = BufferPool(self.CLASSES, limit=self.LIMIT, arena_size=1024)
        self.live: dict[int, bytes] = {}
        self.failed = 0
        self.high = 0

    def expected_class(self, size: int) -> int:
        return next(c for c in self.CLASSES if c >= size)

    @rule(size=st.integers(0, 4096))
    def acquire(self, size):
        try:
            h = self.pool.acquire(size)
        except PoolExhausted:
            self.failed += 1
            return
        assert h not in self.live
        assert self.pool.block_size(h) == self.expected_class(size)
        content = fill(h ^ len(self.live), min(size, 32))
        self.pool.write(h, 0, content)
        self.live[h] = content
        self.high = max(self.high, self.in_use())

    @rule(size=st.integers(4097, 1 << 20))
    def acquire_too_big(self, size):
        with pytest.raises(ValueError):
            self.pool.acquire(size)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def release(self, data):
        h = data.draw(st.sampled_from(sorted(self.live)))
        assert self.pool.read(h, 0, len(self.live[h])) == self.live[h]
        del self.live[h]
        self.pool.release(h)
        with pytest.raises(InvalidBlock):
            self.pool.release(h)

    @rule()
    def trim(self):
        before = self.pool.bytes_reserved
        freed = self.pool.trim()
        assert freed >= 0
        assert self.pool.bytes_reserved == before - freed

    def in_use(self) -> int:
        return sum(self.pool.block_size(h) for h in self.live)

    @invariant()
    def accounting(self):
        assert self.pool.bytes_in_use == self.in_use()
        assert self.pool.bytes_in_use <= self.pool.bytes_reserved <= self.LIMIT
        assert self.pool.failed_acquires == self.failed
        assert self.pool.high_water == self.high
        per_class = [0] * len(self.CLASSES)
        for h in self.live:
            per_class[self.CLASSES.index(self.pool.block_size(h))] += 1
        assert self.pool.stats()["blocks_in_use"] == tuple(per_class)

    def teardown(self) -> None:
        for h in self.live:
            self.pool.release(h)
        assert self.pool.bytes_in_use == 0
        self.pool.trim()
        assert self.pool.bytes_reserved == 0


PoolMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestPoolMachine = PoolMachine.TestCase
