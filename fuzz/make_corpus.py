"""Write the seed corpus: ``python fuzz/make_corpus.py`` (from anywhere).

One directory per target under ``fuzz/corpus/``, each file named by the SHA-1 of its
bytes (as libFuzzer names the inputs it keeps), in the target's input layout (see each
target's docstring): real frames and streams in both roles, handshakes, plain and
JSON-RPC HTTP requests, JSON-RPC requests and replies, each valid and broken. Files
already there are kept (crash reproducers are added by hand and never regenerated);
this script only adds.
"""
from __future__ import annotations

import hashlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "tests"), os.path.join(HERE, "..", "tests", "unit")]

from reference_codec import ref_close_payload, ref_encode  # noqa: E402

KEY = b"\x37\xfa\x21\x3d"
KEY_TEXT = b"dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY_TEXT + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")


def frame_streams(masked: bool) -> list[bytes]:
    """Streams of frames as a client (masked) or a server (unmasked) sends them."""
    k = KEY if masked else None

    def f(op: int, payload: bytes = b"", fin: bool = True, rsv: int = 0) -> bytes:
        raw = bytearray(ref_encode(op, payload, fin=fin, mask_key=k))
        raw[0] |= rsv << 4
        return bytes(raw)

    return [
        f(1, b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}'),
        f(2, bytes(range(256))),
        f(1, b"") + f(2, b""),
        f(1, "h\u00e9llo \u20ac \U0001f600".encode()),
        f(1, b"frag", fin=False) + f(9, b"ping") + f(0, b"ment", fin=False) + f(0, b"ed"),
        f(2, b"a", fin=False) + f(0, b"b", fin=False) + f(0, b"c"),
        f(9, b"") + f(10, b"pong") + f(9, b"x" * 125),
        f(8, ref_close_payload(1000, b"bye")),
        f(8, b""),
        f(1, b"after") + f(8, ref_close_payload(4000)) + f(1, b"never read"),
        f(1, b"x" * 126) + f(2, b"y" * 1000),
        f(1, b"z" * 1025),                                   # over the 1 KiB limit: 1009
        f(1, b"a", fin=False) + b"".join(f(0, b"b", fin=False) for _ in range(9)) + f(0, b""),  # fragments
        f(1, "\u00e9".encode()[:1], fin=False) + f(0, "\u00e9".encode()[1:]),  # UTF-8 cut
        f(1, b"\xff"),                                       # not UTF-8: 1007
        f(1, b"\xed\xa0\x80"),                               # a surrogate: 1007
        f(1, b"x", rsv=4),                                   # RSV1: 1002
        f(3, b"x"),                                          # reserved opcode
        f(9, b"p", fin=False),                               # fragmented control frame
        f(0, b"orphan continuation"),
        f(1, b"a", fin=False) + f(1, b"b"),                  # data frame inside a message
        f(8, b"\x03"),                                       # close payload of 1 byte
        f(8, ref_close_payload(1005)),                       # a code never sent on the wire
        f(8, ref_close_payload(1000) + b"\xff"),             # reason not UTF-8
        ref_encode(1, b"m", mask_key=None if masked else KEY),  # wrong masking for the role
        bytes([0x81, 126, 0, 5]) + (KEY if masked else b"") + b"hello",  # non-minimal length
        bytes([0x82, 127]) + (1 << 63).to_bytes(8, "big"),  # length MSB set
        f(1, b"partial")[:-3],                               # ends mid-frame
    ]


def frames_corpus() -> list[bytes]:
    out = []
    server, client = frame_streams(True), frame_streams(False)
    for i, s in enumerate(server):
        out.append(bytes([0, i % 3]) + s)
    for i, s in enumerate(client):
        out.append(bytes([1, i % 3]) + s)
    # client role, the server's response head from the input (flags bit 3)
    from frames import RESPONSE

    for i, head in enumerate([
        RESPONSE,
        RESPONSE.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: v1\r\n\r\n"),
        RESPONSE.replace(b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", b"AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        RESPONSE.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101\r\n\r\n",
        b"HTTP/1.0 101 Switching Protocols\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        RESPONSE[:40],
    ]):
        out.append(bytes([9, i % 3]) + head + client[i % len(client)])
    # two connections whose callbacks reach across (flags bit 4): every action, both pools
    cross = b"".join(ref_encode(1 + a % 2, bytes([a]) + ref_encode(1, bytes([a ^ 1]) * 3, mask_key=KEY),
                                mask_key=KEY) for a in range(8))
    for flags in (16, 20):
        out.append(bytes([flags, 0]) + cross)
        out.append(bytes([flags, 1]) + cross[:120])
        out.append(bytes([flags, 9]) + cross + server[4])
    # chaos and tight-pool modes: a few streams each, messages picking every action
    actions = b"".join(ref_encode(1, bytes([a]) + b"act", mask_key=KEY) for a in range(8))
    for flags in (2, 4, 6):
        out.append(bytes([flags, 7]) + actions)
        out.append(bytes([flags | 1, 7]) + b"".join(ref_encode(2, bytes([a]) * 40) for a in range(8)))
        out.append(bytes([flags, 0]) + server[4] + server[10])
    return out


def http_corpus() -> list[bytes]:
    body = b'{"jsonrpc":"2.0","id":1,"method":"t_echo","params":["x"]}'
    batch = b'[{"jsonrpc":"2.0","id":1,"method":"rpc_modules"},{"jsonrpc":"2.0","method":"t_echo"}]'

    def post(b: bytes, extra: bytes = b"", version: bytes = b"1.1", path: bytes = b"/rpc") -> bytes:
        return (b"POST " + path + b" HTTP/" + version + b"\r\nHost: node:8546\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(b) + extra + b"\r\n" + b)

    ws_frames = ref_encode(1, b"hello", mask_key=KEY) + ref_encode(8, ref_close_payload(1000), mask_key=KEY)
    heads = [
        UPGRADE,
        UPGRADE + ws_frames,
        UPGRADE.replace(b"/chat", b"/ws").replace(b"\r\n\r\n", b"\r\nOrigin: https://a.example.com\r\n"
                                                  b"Sec-WebSocket-Protocol: v1, v2\r\n\r\n"),
        UPGRADE.replace(b"\r\n\r\n", b"\r\nX-Deny: 1\r\n\r\n"),
        UPGRADE.replace(b"13", b"8"),
        UPGRADE.replace(KEY_TEXT, b"short"),
        UPGRADE.replace(b"GET", b"POST"),
        UPGRADE.replace(b"Upgrade: websocket\r\n", b""),
        b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n",
        b"HEAD /health HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /nowhere?q=1 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"DELETE /health HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",                                      # no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",                # obs-fold
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",                                 # bare LF
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"p" * 1100 + b"\r\n\r\n",  # over 1 KiB: 431
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 101 + b"\r\n",  # too many fields
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",                 # a TLS ClientHello
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b" GET / HTTP/1.1\r\n",
        b"GET  / HTTP/1.1\r\n",
        b"G" * 40 + b" / HTTP/1.1\r\nHost: a\r\n\r\n",                  # method over 32 bytes
        b"GET / HTTP/1.1\rX",
        b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        post(body),
        post(body) + post(batch),                                        # keep-alive, pipelined
        post(body, b"Connection: close\r\n"),
        post(body, version=b"1.0"),
        post(body, b"Connection: keep-alive\r\n", version=b"1.0") + post(b""),
        post(b""),
        post(body)[:-10],                                                # body cut short
        post(body).replace(b"application/json", b"text/plain"),
        post(body).replace(b"Content-Length: %d" % len(body), b"Content-Length: 99999"),
        post(body).replace(b"Content-Length: %d" % len(body), b"Content-Length: 1x"),
        post(body, b"Transfer-Encoding: chunked\r\n"),
        post(body).replace(b"Content-Length: %d\r\n" % len(body), b"Transfer-Encoding: chunked\r\n"),
        post(body, path=b"/health"),
        post(b"{bad json"),
        post(body) + UPGRADE + ws_frames,
    ]
    out = []
    for i, h in enumerate(heads):
        out.append(bytes([1, i % 3]) + h)      # JSON-RPC over HTTP served
        if i % 4 == 0:
            out.append(bytes([0, 0]) + h)
            out.append(bytes([7, 5]) + h)      # strict policy, admission refusing
        if b"POST" in h[:4] or i % 8 == 1:
            out.append(bytes([9, i % 3]) + h)  # answers deferred, then respond()
    return out


def fastcall_corpus() -> list[bytes]:
    import test_clientcall
    import test_fastcall

    server = test_fastcall.CORPUS + test_fastcall.CANONICAL + test_fastcall.NOT_CANONICAL
    out = [b"\x00" + m for m in server if b"\n" not in m]
    out.append(b"\x00" + b"\n".join(m for m in test_fastcall.CORPUS if b"\n" not in m)[:6000])
    out.append(b"\x00" + b"\n".join([b'{"jsonrpc":"2.0","id":1,"method":"t_boom"}'] * 3
                                    + [b'{"jsonrpc":"2.0","id":2,"method":"t_zero","params":[]}']))
    out += [b"\x01" + m for m in test_clientcall.CORPUS if b"\n" not in m]
    out.append(b"\x01" + b"\n".join(m for m in test_clientcall.CORPUS[:6] if b"\n" not in m))
    return out


CORPORA = {"frames": frames_corpus, "http_head": http_corpus, "fastcall": fastcall_corpus}


def main() -> None:
    for name, make in CORPORA.items():
        d = os.path.join(HERE, "corpus", name)
        os.makedirs(d, exist_ok=True)
        added = 0
        for data in make():
            path = os.path.join(d, hashlib.sha1(data).hexdigest())
            if not os.path.exists(path):
                with open(path, "wb") as fh:
                    fh.write(data)
                added += 1
        print(f"{name}: {added} added, {len(os.listdir(d))} in {os.path.relpath(d)}")


if __name__ == "__main__":
    main()
