"""Autobahn|Testsuite server conformance of ``examples/echo_server.py`` (groups 1-7, 9, 10).

The run is ``tests/conformance/autobahn.py``, started as a script in its own process (it
puts kosoku's case and shim directories on ``sys.path``, which must not leak into this
one). The fast tests below pin down the harness itself: the verdict rules, the client's
checks of server frames and of the handshake, and the payload octets of the case files.

Group 9 sends messages of up to 16 MiB, so the echo server runs with
``--max-message-size 16777216``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "fastrpc_autobahn_harness", Path(__file__).with_name("autobahn.py"))
assert _spec is not None and _spec.loader is not None
harness = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = harness  # dataclasses look their module up while the class is made
_spec.loader.exec_module(harness)

MiB = 1 << 20


def _env() -> dict[str, str]:
    """The repository on PYTHONPATH, so ``python examples/echo_server.py`` imports fastrpc
    from this checkout whether or not it was installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.conformance.autobahn", *args],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


# --- the case set ---------------------------------------------------------------------------

def test_case_set_loads_with_the_expected_count_per_group() -> None:
    proc = _run("--list", timeout=60)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert {int(g): n for g, n in listed["per_group"].items()} == harness.EXPECTED_CASES
    assert listed["self_check"] == []  # group 6 validity agrees with Python's decoder


# --- (a): the octets a Python 2 payload literal meant ---------------------------------------

class TestWireBytes:
    def test_escaped_multibyte_text_is_not_encoded_twice(self) -> None:
        # case 6.2.4's payload, written '\xce\xba\xe1...' in the case file
        assert harness.wire_bytes("6.2.4", "\xce\xba\xe1\xbd\xb9") == b"\xce\xba\xe1\xbd\xb9"

    def test_literal_utf8_source_text_is_utf8(self) -> None:
        assert harness.wire_bytes("6.2.1", "Hello-\u00b5@") == "Hello-\u00b5@".encode()

    def test_binary_octets_stay_octets(self) -> None:
        assert harness.wire_bytes("1.2.2", "\xfe" * 3) == b"\xfe\xfe\xfe"

    def test_py2_string_indexing_gives_one_octet(self) -> None:
        assert harness.wire_bytes("6.4.2", 0xF4) == b"\xf4"

    def test_invalid_close_reason_stays_invalid(self) -> None:
        reason = harness.wire_bytes("7.5.1", "\xce\xba\xed\xa0\x80")
        assert not harness.utf8_state(reason, complete=True)


# --- (c): the opening handshake -------------------------------------------------------------

def test_accept_value_of_the_rfc_example() -> None:
    # RFC 6455 section 1.3
    assert harness.accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# --- (b): the server's frames ---------------------------------------------------------------

class TestServerFrames:
    def feed(self, *chunks: bytes) -> list[tuple[bool, int, bytes]]:
        parser = harness._ServerFrames()
        out = []
        for chunk in chunks:
            out += parser.feed(chunk)
        return out

    def test_frames_split_at_every_octet(self) -> None:
        wire = harness.frame_header(1, 300, True, 0, None) + b"x" * 300 + b"\x8a\x00"
        assert self.feed(*(wire[i:i + 1] for i in range(len(wire)))) == [
            (True, 1, b"x" * 300), (True, 10, b"")]

    @pytest.mark.parametrize("wire, rule", [
        (b"\x81\x85abcd" + b"hello", "masked"),
        (b"\x81\x7e\x00\x05hello", "not minimal"),
        (b"\x82\x7f" + (65535).to_bytes(8, "big"), "not minimal"),
        (b"\xc1\x00", "RSV"),
        (b"\x83\x00", "reserved opcode"),
        (b"\x09\x00", "fragmented"),
        (b"\x89\x7e\x00\x7e", "> 125"),
    ])
    def test_rule_broken(self, wire: bytes, rule: str) -> None:
        with pytest.raises(harness.Violation, match=rule):
            self.feed(wire)

    def test_close_codes_an_endpoint_may_send(self) -> None:
        may = harness.may_send_close_code
        assert all(may(c) for c in (1000, 1003, 1007, 1011, 1014, 3000, 4999))
        assert not any(may(c) for c in (0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535))


# --- the verdict ------------------------------------------------------------------------------

FAIL_FAST = {"closedByMe": False, "closeCode": [1002], "requireClean": False}
ECHO_CLOSE = {"closedByMe": True, "closeCode": [1000], "requireClean": True}


def observe(**kw: object) -> object:
    base: dict[str, object] = dict(case_id="0.0.0", expected={"OK": []},
                                   expected_close=FAIL_FAST, events=[])
    base.update(kw)
    return harness.Observation(**base)


class TestJudge:
    def test_fail_fast_with_1002(self) -> None:
        obs = observe(remote_close_received=True, remote_close_code=1002, was_clean=True)
        assert harness.judge(obs) == ("OK", [])

    def test_fail_fast_by_dropping_tcp(self) -> None:
        assert harness.judge(observe())[0] == "OK"  # RFC 6455 7.1.7: failing may just drop

    def test_fail_fast_with_the_wrong_code(self) -> None:
        obs = observe(remote_close_received=True, remote_close_code=1000, was_clean=True)
        verdict, reasons = harness.judge(obs)
        assert verdict == "FAILED" and "code 1000" in reasons[0]

    def test_bad_frame_ignored_until_our_kill_timer(self) -> None:
        verdict, reasons = harness.judge(observe(dropped_by_me=True, drop_reason="kill timer"))
        assert verdict == "FAILED" and "drop" in reasons[0]

    def test_bad_frame_answered_by_our_close(self) -> None:
        verdict, _ = harness.judge(observe(closed_by_me=True, remote_close_received=True,
                                           remote_close_code=1000, was_clean=True))
        assert verdict == "FAILED"

    def test_echo_then_clean_close(self) -> None:
        events = [("message", b"\xce\xba", False)]
        obs = observe(expected={"OK": events}, events=list(events), expected_close=ECHO_CLOSE,
                      closed_by_me=True, remote_close_received=True, remote_close_code=1000,
                      was_clean=True)
        assert harness.judge(obs) == ("OK", [])

    def test_text_echoed_as_binary(self) -> None:
        obs = observe(expected={"OK": [("message", b"a", False)]},
                      events=[("message", b"a", True)], expected_close=ECHO_CLOSE,
                      closed_by_me=True, remote_close_received=True, was_clean=True)
        assert harness.judge(obs)[0] == "FAILED"

    def test_server_keeps_tcp_open_after_the_closing_handshake(self) -> None:
        obs = observe(expected_close=ECHO_CLOSE, closed_by_me=True, remote_close_received=True,
                      remote_close_code=1000, dropped_by_me=True, drop_reason="server drop")
        assert harness.judge(obs)[0] == "FAILED"

    def test_non_strict_sequence(self) -> None:
        obs = observe(expected={"OK": [("message", b"m", False)], "NON-STRICT": []})
        assert harness.judge(obs) == ("NON-STRICT", [])

    def test_informational_case_still_fails_a_framing_violation(self) -> None:
        ok = observe(case_id="7.13.1", informational=True)
        bad = observe(case_id="7.13.1", informational=True, violations=["masked frame"])
        assert harness.judge(ok)[0] == "INFORMATIONAL"
        assert harness.judge(bad)[0] == "FAILED"

    def test_handshake_failure(self) -> None:
        assert harness.judge(observe(handshake_error="bad accept"))[0] == "FAILED"


# --- the run ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_echo_server_passes_autobahn(loop: str, tmp_path: Path) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    cmd = " ".join(shlex.quote(a) for a in (
        sys.executable, "examples/echo_server.py", "--loop", loop, "--port", "{port}",
        "--max-message-size", str(16 * MiB)))
    out = tmp_path / "autobahn.json"
    proc = _run("--cmd", cmd, "--cases", ",".join(map(str, harness.GROUPS)),
                "--json", str(out), "--markdown", str(tmp_path / "autobahn.md"), "-q",
                timeout=800)
    assert out.exists(), f"no report (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(out.read_text())
    executed = {int(g): row["cases"] for g, row in report["summary"].items()}
    failed = [f"{r['case_id']}: {'; '.join(r['reasons'])}"
              for r in report["results"] if r["verdict"] == "FAILED"]
    table = "\n".join(f"group {g}: {row}" for g, row in report["summary"].items())
    assert executed == harness.EXPECTED_CASES, table
    assert not failed, f"{len(failed)} FAILED\n{table}\n" + "\n".join(failed[:40])
    assert proc.returncode == 0, proc.stderr
