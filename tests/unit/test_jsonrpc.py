"""fastrpc.jsonrpc: validation and encoding, by section of jsonrpc.org/specification."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastrpc import errors, jsonrpc
from fastrpc.jsonrpc import NO_ID, NO_PARAMS, invalid_reason

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(
    allow_nan=False, allow_infinity=False
) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def ok(**overrides):
    msg = {"jsonrpc": "2.0", "method": "m", "id": 1, "params": []}
    msg.update(overrides)
    return {k: v for k, v in msg.items() if v is not DROP}


DROP = object()


class TestSection4RequestObject:
    def test_valid_forms(self):
        assert invalid_reason(ok()) is None
        assert invalid_reason(ok(params={"a": 1})) is None
        assert invalid_reason(ok(params=DROP)) is None  # params MAY be omitted
        assert invalid_reason(ok(id=DROP)) is None  # a notification
        assert invalid_reason(ok(extra="ignored")) is None

    @pytest.mark.parametrize("version", [DROP, "1.0", 2.0, 2, None, "2"])
    def test_jsonrpc_must_be_exactly_2_0(self, version):
        assert invalid_reason(ok(jsonrpc=version)) == jsonrpc.REASON_VERSION

    @pytest.mark.parametrize("method", [DROP, 1, None, ["m"], {"m": 1}, True])
    def test_method_must_be_a_string(self, method):
        assert invalid_reason(ok(method=method)) == jsonrpc.REASON_METHOD

    @pytest.mark.parametrize("rid", ["abc", "", 0, -5, 2**63 - 1, 1.5, None])
    def test_id_string_number_or_null(self, rid):
        assert invalid_reason(ok(id=rid)) is None

    @pytest.mark.parametrize("rid", [True, False, {}, {"a": 1}, [], [1]])
    def test_id_of_wrong_type(self, rid):
        assert invalid_reason(ok(id=rid)) == jsonrpc.REASON_ID

    @pytest.mark.parametrize("params", ["bar", 1, 1.5, True, None])
    def test_params_must_be_structured(self, params):
        # §4.2: "params MUST be either an Array or an Object"; null is neither.
        assert invalid_reason(ok(params=params)) == jsonrpc.REASON_PARAMS

    def test_checks_in_order(self):
        assert invalid_reason({"method": 1, "id": True}) == jsonrpc.REASON_VERSION
        assert invalid_reason({"jsonrpc": "2.0", "method": 1, "id": True}) == jsonrpc.REASON_METHOD

    def test_sentinels_are_distinct_types(self):
        assert type(NO_ID) in jsonrpc.ID_TYPES and type(NO_PARAMS) in jsonrpc.PARAMS_TYPES
        assert type(NO_PARAMS) not in jsonrpc.ID_TYPES and type(NO_ID) not in jsonrpc.PARAMS_TYPES

    @given(
        st.dictionaries(
            st.sampled_from(["jsonrpc", "method", "id", "params", "x"]),
            st.sampled_from(["2.0", "1.0", 2.0, "m", "", 0, 1.5, -1, True, False, None, [], [1], {}, {"a": 1}]),
        )
    )
    def test_matches_the_spec_predicate(self, msg):
        spec_valid = (
            msg.get("jsonrpc") == "2.0"
            and type(msg.get("jsonrpc")) is str
            and isinstance(msg.get("method"), str)
            and ("id" not in msg or (msg["id"] is None or type(msg["id"]) in (str, int, float)))
            and ("params" not in msg or isinstance(msg["params"], (list, dict)))
        )
        assert (invalid_reason(msg) is None) == spec_valid


class TestSection5ResponseObject:
    def test_result(self):
        assert orjson.loads(jsonrpc.result(7, {"a": [1]})) == {"jsonrpc": "2.0", "id": 7, "result": {"a": [1]}}

    def test_result_null_is_sent(self):
        assert orjson.loads(jsonrpc.result("x", None)) == {"jsonrpc": "2.0", "id": "x", "result": None}

    def test_result_fragment_is_not_reencoded(self):
        frag = jsonrpc.Fragment(b'{"pre":"encoded"}')
        assert jsonrpc.result(1, frag) == b'{"jsonrpc":"2.0","id":1,"result":{"pre":"encoded"}}'

    def test_result_not_json_raises_type_error(self):
        with pytest.raises(TypeError):
            jsonrpc.result(1, object())

    def test_error_without_and_with_data(self):
        assert orjson.loads(jsonrpc.error(1, -1, "m")) == {
            "jsonrpc": "2.0",
            "id": 1,
            "error": {"code": -1, "message": "m"},
        }
        assert orjson.loads(jsonrpc.error(None, -1, "m", [1]))["error"]["data"] == [1]

    def test_error_with_unencodable_data_drops_data(self):
        assert orjson.loads(jsonrpc.error(1, -5, "m", object()))["error"] == {"code": -5, "message": "m"}

    @pytest.mark.parametrize(
        "reply, code, message",
        [
            (jsonrpc.PARSE_ERROR_REPLY, errors.PARSE_ERROR, "Parse error"),
            (jsonrpc.EMPTY_BATCH_REPLY, errors.INVALID_REQUEST, "empty batch"),
            (jsonrpc.BATCH_TOO_LARGE_REPLY, errors.INVALID_REQUEST, "batch too large"),
            (jsonrpc.NOT_AN_OBJECT_REPLY, errors.INVALID_REQUEST, "request must be an object"),
        ],
    )
    def test_fixed_replies(self, reply, code, message):
        assert orjson.loads(reply) == {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}

    def test_invalid_request_echoes_a_valid_id_only(self):
        assert orjson.loads(jsonrpc.invalid_request({"jsonrpc": "1.0", "id": 5, "method": "m"}))["id"] == 5
        assert orjson.loads(jsonrpc.invalid_request({"jsonrpc": "2.0", "id": [5], "method": "m"}))["id"] is None
        assert orjson.loads(jsonrpc.invalid_request({"jsonrpc": "2.0", "method": 1}))["id"] is None

    def test_fixed_errors_use_fixed_messages(self):
        for code in (
            errors.REQUEST_TIMEOUT,
            errors.SERVICE_UNAVAILABLE,
            errors.SERVICE_BUSY,
            errors.RESPONSE_TOO_LARGE,
            errors.METHOD_NOT_FOUND,
            errors.INTERNAL_ERROR,
        ):
            assert orjson.loads(jsonrpc.fixed_error(3, code))["error"] == {
                "code": code,
                "message": errors.MESSAGES[code],
            }

    @given(json_values, st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=10)))
    def test_result_roundtrip(self, value, rid):
        assert orjson.loads(jsonrpc.result(rid, value)) == {"jsonrpc": "2.0", "id": rid, "result": value}


class TestSection6Batch:
    def test_batch_joins_in_order(self):
        parts = [jsonrpc.result(1, 1), jsonrpc.result(2, 2)]
        assert orjson.loads(jsonrpc.batch(parts)) == [orjson.loads(p) for p in parts]


class TestNotifications:
    def test_subscription_result(self):
        assert orjson.loads(jsonrpc.subscription_result("eth_subscription", "0xab", {"n": 1})) == {
            "jsonrpc": "2.0",
            "method": "eth_subscription",
            "params": {"subscription": "0xab", "result": {"n": 1}},
        }

    def test_subscription_error(self):
        assert orjson.loads(jsonrpc.subscription_error("eth_subscription", "0xab", errors.SUBSCRIBER_TOO_SLOW)) == {
            "jsonrpc": "2.0",
            "method": "eth_subscription",
            "params": {"subscription": "0xab", "error": {"code": -32004, "message": "subscriber too slow"}},
        }

    def test_notification(self):
        assert orjson.loads(jsonrpc.notification("x_y", [1])) == {"jsonrpc": "2.0", "method": "x_y", "params": [1]}


class TestCodes:
    def test_spec_codes(self):
        assert (errors.PARSE_ERROR, errors.INVALID_REQUEST, errors.METHOD_NOT_FOUND) == (-32700, -32600, -32601)
        assert (errors.INVALID_PARAMS, errors.INTERNAL_ERROR) == (-32602, -32603)

    def test_server_codes_in_the_reserved_range_and_distinct(self):
        own = [
            errors.REQUEST_TIMEOUT,
            errors.SERVICE_UNAVAILABLE,
            errors.SERVICE_BUSY,
            errors.SUBSCRIBER_TOO_SLOW,
            errors.TOO_MANY_SUBSCRIPTIONS,
            errors.RESPONSE_TOO_LARGE,
        ]
        assert all(-32099 <= c <= -32000 for c in own)
        assert len(set(own)) == len(own)
        assert set(own) <= set(errors.MESSAGES)

    def test_invalid_params_is_an_rpc_error(self):
        e = errors.InvalidParams("missing value", data=1)
        assert isinstance(e, errors.RPCError) and e.code == -32602 and e.data == 1
