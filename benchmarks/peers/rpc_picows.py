"""JSON-RPC 2.0 over WebSocket with picows.

    python benchmarks/peers/rpc_picows.py --port 9004 [--loop uvloop]

picows hands every *frame* to ``WSListener.on_ws_frame``. A whole message (FIN set, the
common case) is parsed straight from ``frame.get_payload_as_memoryview()`` (zero-copy;
the view is only used inside the callback); fragments are joined in a bytearray first.
Replies go out with ``transport.send(TEXT, reply)``. Close frames are answered as
picows' own examples do; pings are answered by picows (``enable_auto_pong``, default).
picows does not compress. Other settings are picows' defaults (it uses aiofastnet for
its sockets when that package is installed, as it is here).
"""
from __future__ import annotations

from typing import Awaitable, Callable

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

from _cli import closer
from _rpc import handle, run

TEXT, BINARY, CONTINUATION, CLOSE = (
    WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION, WSMsgType.CLOSE)


class RpcListener(WSListener):
    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: bytearray | None = None  # payload so far of a fragmented message

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if (msg_type is TEXT or msg_type is BINARY) and self._parts is None:
            if frame.fin:
                reply = handle(frame.get_payload_as_memoryview())
                if reply is not None:
                    transport.send(TEXT, reply)
            else:
                self._parts = bytearray(frame.get_payload_as_memoryview())
        elif msg_type is CONTINUATION and self._parts is not None:
            self._parts += frame.get_payload_as_memoryview()
            if frame.fin:
                reply = handle(self._parts)
                self._parts = None
                if reply is not None:
                    transport.send(TEXT, reply)
        elif msg_type is CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif msg_type is TEXT or msg_type is BINARY or msg_type is CONTINUATION:
            transport.send_close(WSCloseCode.PROTOCOL_ERROR)  # RFC 6455 §5.4
            transport.disconnect()


async def serve(host: str, port: int) -> Callable[[], Awaitable[None]]:
    server = await ws_create_server(lambda _request: RpcListener(), host, port)
    return closer(server)


if __name__ == "__main__":
    run(serve, __doc__.split("\n\n")[0])
