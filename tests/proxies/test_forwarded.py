"""``fastrpc.proxies``: the real client from X-Forwarded-For, only behind a trusted proxy.

Pure function calls, no sockets; the in-process server checks at the end go through
``handle_request`` with the server's own hook.
"""
from __future__ import annotations

import ipaddress

import pytest

from fastrpc.proxies import TrustedProxies, parse_address

T = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"])


class TestParseAddress:
    @pytest.mark.parametrize("text, want", [
        ("192.0.2.1", "192.0.2.1"),
        ("  192.0.2.1\t", "192.0.2.1"),
        ("192.0.2.1:5678", "192.0.2.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:192.0.2.7", "192.0.2.7"),       # IPv4-mapped counts as IPv4
        ("[::ffff:192.0.2.7]:80", "192.0.2.7"),
    ])
    def test_forms(self, text, want):
        assert str(parse_address(text)) == want

    @pytest.mark.parametrize("text", [
        "", " ", "unknown", "_hidden", "example.com", "192.0.2", "192.0.2.256", "192.0.2.01",
        "192.0.2.1:", "192.0.2.1:x", "192.0.2.1:123456", "192.0.2.1:²", "[2001:db8::1",
        "[2001:db8::1]x", "[2001:db8::1]:", "[192.0.2.1]", "fe80::1%eth0", "[fe80::1%eth0]",
        "1.2.3.4 5.6.7.8", "\x001.2.3.4", "０.1.2.3", "1.2.3.4/32",
    ])
    def test_not_addresses(self, text):
        assert parse_address(text) is None


class TestTrustedProxies:
    def test_networks(self):
        assert T.trusts("127.0.0.1") and T.trusts("10.20.30.40") and T.trusts("::1")
        assert T.trusts("fd12::5") and T.trusts("::ffff:10.0.0.1")
        assert not T.trusts("127.0.0.2") and not T.trusts("192.0.2.1") and not T.trusts("2001:db8::1")
        assert not T.trusts("garbage")

    def test_config_errors(self):
        with pytest.raises(TypeError):
            TrustedProxies("127.0.0.1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="10.0.0.1/8"):
            TrustedProxies(["10.0.0.1/8"])  # host bits set: a typo
        with pytest.raises(ValueError):
            TrustedProxies(["localhost"])
        with pytest.raises(TypeError):
            TrustedProxies([127])  # type: ignore[list-item]
        assert TrustedProxies([ipaddress.ip_network("10.0.0.0/8")]).trusts("10.1.2.3")

    def test_untrusted_peer_is_ignored(self):
        assert T.client("192.0.2.9", ["198.51.100.1"]) is None
        assert T.client("127.0.0.2", ["198.51.100.1"]) is None

    def test_single_hop(self):
        assert T.client("127.0.0.1", ["198.51.100.1"]) == "198.51.100.1"
        assert T.client("::1", ["2001:db8::7"]) == "2001:db8::7"
        assert T.client("127.0.0.1", ["[2001:db8::7]:1234"]) == "2001:db8::7"

    def test_no_header_or_empty(self):
        assert T.client("127.0.0.1", []) is None
        assert T.client("127.0.0.1", [""]) is None
        assert T.client("127.0.0.1", [" , ,"]) is None

    def test_rightmost_untrusted_wins(self):
        # client -> 10.0.0.5 (a trusted proxy) -> 127.0.0.1 (us)
        assert T.client("127.0.0.1", ["198.51.100.1, 10.0.0.5"]) == "198.51.100.1"
        assert T.client("127.0.0.1", ["203.0.113.9, 198.51.100.1, 10.0.0.5, 10.0.0.6"]) == "198.51.100.1"

    def test_spoofing_on_the_left_is_not_believed(self):
        # The client sent "X-Forwarded-For: 1.1.1.1"; nginx appended the real address.
        assert T.client("127.0.0.1", ["1.1.1.1, 198.51.100.1"]) == "198.51.100.1"
        # A trusted address written by the client sits left of the real one: never reached.
        assert T.client("127.0.0.1", ["1.1.1.1, 10.0.0.9, 198.51.100.1"]) == "198.51.100.1"
        # Junk on the left of the real client changes nothing.
        assert T.client("127.0.0.1", ["<script>, unknown, 198.51.100.1"]) == "198.51.100.1"

    def test_multiple_headers_are_one_list(self):
        assert T.client("127.0.0.1", ["1.1.1.1", "198.51.100.1, 10.0.0.5"]) == "198.51.100.1"
        assert T.client("127.0.0.1", ["198.51.100.1", "10.0.0.5", ""]) == "198.51.100.1"
        assert T.client("127.0.0.1", ["198.51.100.1", "203.0.113.2"]) == "203.0.113.2"

    def test_malformed_stops_the_walk(self):
        assert T.client("127.0.0.1", ["198.51.100.1, unknown"]) is None       # rightmost bad: keep peer
        assert T.client("127.0.0.1", ["198.51.100.1, _x, 10.0.0.5"]) == "10.0.0.5"  # last trusted hop
        assert T.client("127.0.0.1", ["198.51.100.1, fe80::1%eth0"]) is None
        assert T.client("127.0.0.1", ["198.51.100.1;by=x"]) is None  # RFC 7239 syntax is not XFF

    def test_all_trusted_gives_the_leftmost(self):
        assert T.client("127.0.0.1", ["10.0.0.1, 10.0.0.2"]) == "10.0.0.1"

    def test_ipv6_and_mapped(self):
        assert T.client("::1", ["2001:db8::1, fd00::2"]) == "2001:db8::1"
        assert T.client("::ffff:127.0.0.1", ["::ffff:198.51.100.3"]) == "198.51.100.3"

    def test_client_from_headers_is_case_insensitive(self):
        headers = [("Host", "x"), ("x-forwarded-FOR", "1.1.1.1"), ("X-Forwarded-For", "198.51.100.1"),
                   ("X-Forwarded-Host", "203.0.113.1")]
        assert T.client_from_headers("127.0.0.1", headers) == "198.51.100.1"
        assert T.client_from_headers("127.0.0.1", [("Host", "x")]) is None
