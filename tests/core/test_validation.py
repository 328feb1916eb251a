"""Request validation: pure Python, no TorchServe (core/validation.py)."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from core import validation as v

SCHEMA = json.loads((Path(v.__file__).parent / "request.schema.json").read_text())


def parse(body, content_type=None):
    return v.parse_request(body, content_type)


def reject(body, reason, status=400, content_type=None):
    with pytest.raises(v.InvalidRequest) as e:
        parse(body, content_type)
    assert e.value.reason == reason, e.value.message
    assert e.value.status == status
    assert e.value.message and len(e.value.message) < 400
    d = e.value.to_dict()
    assert d["code"] == status and d["reason"] == reason and d["message"] == e.value.message
    return e.value


# ---- accepted ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b'{"user_id": "42"}', bytearray(b'{"user_id": "42"}'),
                                  '{"user_id": "42"}', {"user_id": "42"},
                                  b'\xef\xbb\xbf{"user_id": "42"}'])
def test_body_shapes(body):
    r = parse(body)
    assert r == v.RecRequest(user_id="42", k=10, history=(), exclude_seen=True)


def test_defaults_and_normalization():
    r = parse({"user_id": 42, "k": 5.0, "history": [1, "2", "001", "x:y-z_1.0"], "exclude_seen": False,
               "filters": {"include_categories": ["Comedy", "Comedy"], "exclude_categories": ["Horror"]},
               "exclude": ["7"]})
    assert r.user_id == "42" and r.k == 5
    # canonical ids, oldest first, repeats kept: the encoder counts a repeat at its latest position
    assert r.history == ("1", "2", "1", "x:y-z_1.0")
    assert r.exclude_seen is False
    assert r.include_categories == ("Comedy",) and r.exclude_categories == ("Horror",)
    assert r.exclude == ("7",)


def test_nulls_mean_defaults():
    r = parse({"user_id": "u", "k": None, "history": None, "exclude_seen": None, "filters": None,
               "exclude": None})
    assert r == v.RecRequest(user_id="u")
    r = parse({"user_id": "u", "filters": {"include_categories": None}})
    assert r.include_categories is None and r.exclude_categories == ()


@pytest.mark.parametrize("k", [1, 1000])
def test_k_bounds(k):
    assert parse({"user_id": "u", "k": k}).k == k


def test_content_type_json_string_is_a_decoded_string():
    # Under application/json TorchServe hands over the decoded value: a str is a JSON string.
    reject('{"user_id": "1"}', v.NOT_OBJECT, content_type="application/json")
    # As text/plain the same str is raw text and parses.
    assert parse('{"user_id": "1"}', "text/plain").user_id == "1"


# ---- rejected ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"not json", b"{user_id: 1}", b"", b"   ", b"\xff\xfe\x00",
                                  b'{"user_id": NaN}', "hello", None, b'{"user_id": "1"'])
def test_not_json(body):
    reject(body, v.NOT_JSON)


@pytest.mark.parametrize("body", [b"[1, 2]", b'"a string"', b"42", b"3.5", b"true", b"null",
                                  [{"user_id": "1"}], 7])
def test_not_an_object(body):
    e = reject(body, v.NOT_OBJECT)
    assert "JSON object" in e.message


@pytest.mark.parametrize("obj", [{}, {"k": 5}, {"user_id": None}])
def test_missing_user_id(obj):
    reject(obj, v.MISSING_USER_ID)


@pytest.mark.parametrize("uid,canonical", [
    ("anna@example.com", "anna@example.com"), ("Jürgen", "Jürgen"), ("Ju\u0308rgen", "Jürgen"),
    ("用户42", "用户42"), ("a b", "a b"), ("x" * 256, "x" * 256), (2**63, str(2**63)), ("007", "7"),
    ("550e8400-e29b-41d4-a716-446655440000", "550e8400-e29b-41d4-a716-446655440000")])
def test_ids_as_users_have_them(uid, canonical):
    assert parse({"user_id": uid}).user_id == canonical


@pytest.mark.parametrize("uid", ["", "   ", "x" * 257, "line\nbreak", "tab\t", "\x00", -1, 1.5,
                                 True, [1], {"a": 1}])
def test_bad_user_id(uid):
    e = reject({"user_id": uid}, v.BAD_USER_ID)
    assert "user_id is not a valid id" in e.message


@pytest.mark.parametrize("k", [0, 1001, "ten", 2.5, -3, True, "10", [10], {"n": 1}])
def test_bad_k(k):
    e = reject({"user_id": "1", "k": k}, v.BAD_K)
    assert "1 to 1000" in e.message


@pytest.mark.parametrize("history", ["1,2,3", 5, {"1": 1}, True, [1, [2]], [1, None], [""],
                                     ["ok", "new\nline"], list(range(v.MAX_HISTORY + 1))])
def test_bad_history(history):
    reject({"user_id": "1", "history": history}, v.BAD_HISTORY)


@pytest.mark.parametrize("value", ["yes", 1, 0, [True]])
def test_bad_exclude_seen(value):
    reject({"user_id": "1", "exclude_seen": value}, v.BAD_EXCLUDE_SEEN)


@pytest.mark.parametrize("filters", [["Comedy"], "Comedy", 3, True,
                                     {"include_categories": "Comedy"},
                                     {"include_categories": [1, 2]},
                                     {"exclude_categories": {"a": 1}},
                                     {"include_categories": [""]},
                                     {"categories": ["Comedy"]},
                                     {"include_categories": ["c"] * (v.MAX_CATEGORIES + 1)}])
def test_bad_filters(filters):
    reject({"user_id": "1", "filters": filters}, v.BAD_FILTERS)


@pytest.mark.parametrize("exclude", ["1", 1, [{"id": 1}]])
def test_bad_exclude(exclude):
    reject({"user_id": "1", "exclude": exclude}, v.BAD_EXCLUDE)


def test_unknown_field():
    e = reject({"user_id": "1", "kk": 5}, v.UNKNOWN_FIELD)
    assert "'kk'" in e.message


def test_largest_valid_request_fits_and_a_larger_body_is_413_before_parsing():
    # 5,000 history ids of 256 characters (3-byte UTF-8 each): valid, and under the limit
    biggest = json.dumps({"user_id": "u", "history": [f"{i:05d}" + "用" * 251 for i in range(5000)]},
                         ensure_ascii=False).encode()
    assert 3_800_000 < len(biggest) < v.MAX_BODY_BYTES
    assert len(parse(biggest).history) == 5000
    body = b'{"user_id": "1", "history": [' + b",".join([b'"12345678"'] * 500_000) + b"]}"
    assert len(body) > v.MAX_BODY_BYTES
    reject(body, v.TOO_LARGE, status=413)
    reject(body.decode(), v.TOO_LARGE, status=413, content_type="text/plain")
    reject(json.loads(body), v.TOO_LARGE, status=413)  # already decoded by TorchServe
    reject(b"x" * (v.MAX_BODY_BYTES + 1), v.TOO_LARGE, status=413)  # size is checked before JSON


def test_body_of_rows():
    assert v.body_of({"body": b"x"}) == (b"x", "body")
    assert v.body_of({"data": {"a": 1}}) == ({"a": 1}, "data")
    assert v.body_of({"other": 1}) == (1, "other")
    assert v.body_of({}) == (None, None)


def test_ids_follow_the_shared_rule_on_its_table_of_cases():
    """The handler uses core/ids.py, the rule the ETL's Spark expression is tested against."""
    from core.ids import CASES

    for raw, expected in CASES:
        if expected is None:
            reject({"user_id": raw}, v.BAD_USER_ID)
        else:
            assert parse({"user_id": raw}).user_id == expected


def test_reasons_are_distinct_metric_labels():
    assert len(set(v.REASONS)) == len(v.REASONS)
    assert all(r.replace("_", "").isalpha() for r in v.REASONS)


# ---- modes: related items, candidate lists, diversity ------------------------------------------

def test_similar_to_needs_no_user():
    r = parse({"similar_to": 1, "k": 5})
    assert r.user_id is None and r.similar_to == "1" and r.k == 5 and r.exclude_seen is True
    r = parse({"similar_to": "007", "user_id": None, "history": ["3"], "diversity": 0.25})
    assert r.similar_to == "7" and r.history == ("3",) and r.diversity == 0.25
    assert parse({"user_id": "u", "similar_to": "x"}).user_id == "u"


def test_candidates_defaults_answer_the_whole_list_and_keep_seen_items():
    r = parse({"user_id": "u", "candidates": [1, "2", "002", "x"]})
    assert r.candidates == ("1", "2", "2", "x") and r.k == v.MAX_K and r.exclude_seen is False
    r = parse({"user_id": "u", "candidates": ["1"], "k": 3, "exclude_seen": True})
    assert r.k == 3 and r.exclude_seen is True
    # the defaults live in RecRequest: a request built in code gets the same
    assert v.RecRequest("u", candidates=("1",)) == parse({"user_id": "u", "candidates": ["1"]})
    assert v.RecRequest("u") == parse({"user_id": "u"})
    assert parse({"user_id": "u", "candidates": list(range(v.MAX_CANDIDATES))}).k == v.MAX_K


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 0.5, None])
def test_diversity_range(value):
    assert parse({"user_id": "u", "diversity": value}).diversity == float(value or 0)


@pytest.mark.parametrize("obj,reason", [
    ({"similar_to": "1", "candidates": ["2"]}, v.CONFLICTING_FIELDS),
    ({"user_id": "u", "similar_to": "1", "candidates": ["2"]}, v.CONFLICTING_FIELDS),
    ({"candidates": ["2"]}, v.MISSING_USER_ID),
    ({"history": ["2"]}, v.MISSING_USER_ID),
    ({"similar_to": None}, v.MISSING_USER_ID),
    ({"similar_to": ""}, v.BAD_SIMILAR_TO),
    ({"similar_to": ["1"]}, v.BAD_SIMILAR_TO),
    ({"similar_to": -1}, v.BAD_SIMILAR_TO),
    ({"user_id": "u", "candidates": []}, v.BAD_CANDIDATES),
    ({"user_id": "u", "candidates": "1,2"}, v.BAD_CANDIDATES),
    ({"user_id": "u", "candidates": ["1", None]}, v.BAD_CANDIDATES),
    ({"user_id": "u", "candidates": list(range(v.MAX_CANDIDATES + 1))}, v.BAD_CANDIDATES),
    ({"user_id": "u", "diversity": 1.01}, v.BAD_DIVERSITY),
    ({"user_id": "u", "diversity": -0.1}, v.BAD_DIVERSITY),
    ({"user_id": "u", "diversity": "0.5"}, v.BAD_DIVERSITY),
    ({"user_id": "u", "diversity": True}, v.BAD_DIVERSITY),
])
def test_bad_mode_fields(obj, reason):
    e = reject(obj, reason)
    if reason == v.CONFLICTING_FIELDS:
        assert "similar_to" in e.message and "candidates" in e.message


# ---- the JSON Schema documents the same contract ----------------------------------------------

CROSS_CHECK = [
    {"user_id": "42"}, {"user_id": 42, "k": 1000}, {"user_id": "u", "k": 0}, {"user_id": "u", "k": 1001},
    {"user_id": "u", "k": "ten"}, {"user_id": "u", "k": 2.5}, {"k": 3}, [1], "s", 5,
    {"user_id": "u", "history": "1"}, {"user_id": "u", "history": ["1", 2]},
    {"user_id": "u", "filters": ["a"]}, {"user_id": "u", "filters": {"include_categories": "a"}},
    {"user_id": "u", "filters": {"include_categories": ["a"], "exclude_categories": ["b"]}},
    {"user_id": "u", "filters": {"other": []}}, {"user_id": "u", "exclude": [1, "2"]},
    {"user_id": "u", "exclude": [1.5]}, {"user_id": "u", "exclude_seen": 1},
    {"user_id": "u", "extra": 1}, {"user_id": "bad id"}, {"user_id": -5}, {"user_id": True},
    {"user_id": "u", "k": None, "history": None, "filters": None, "exclude": None},
    {"user_id": "u", "history": ["a" * 257]}, {"user_id": "u", "history": ["a" * 256]},
    {"user_id": "anna@example.com"}, {"user_id": "用户42"}, {"user_id": "   "}, {"user_id": ""},
    {"user_id": "a\nb"}, {"user_id": "\u00a0"}, {"user_id": "0" * 300}, {"user_id": "1" + "0" * 300},
    {"user_id": 2**70},
    {"similar_to": "1"}, {"similar_to": 1, "user_id": None}, {"similar_to": None},
    {"similar_to": "1", "candidates": ["2"]}, {"similar_to": "1", "candidates": None},
    {"similar_to": None, "candidates": ["2"], "user_id": "u"}, {"candidates": ["2"]},
    {"user_id": "u", "candidates": []}, {"user_id": "u", "candidates": ["1", 2]},
    {"user_id": "u", "candidates": list(range(1001))}, {"user_id": "u", "candidates": "1"},
    {"similar_to": ""}, {"similar_to": [1]}, {"similar_to": -1}, {"user_id": None},
    {"user_id": "u", "diversity": 0}, {"user_id": "u", "diversity": 1}, {"user_id": "u", "diversity": 0.3},
    {"user_id": "u", "diversity": 1.5}, {"user_id": "u", "diversity": "0.3"},
    {"user_id": "u", "diversity": None}, {"history": ["1"]}, {"similar_to": "1", "history": ["2"]},
    {"catalog": {}}, {"catalog": None}, {"catalog": {"offset": 3, "limit": 4000}},
    {"catalog": {"limit": 4001}}, {"catalog": {"offset": -1}}, {"catalog": {}, "user_id": "u"},
    {"catalog": {"page": 2}}, {"catalog": 5},
]


@pytest.mark.parametrize("obj", CROSS_CHECK)
def test_schema_and_validator_agree(obj):
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    schema_ok = jsonschema.Draft202012Validator(SCHEMA).is_valid(obj)
    try:
        v.validate_request(obj)
        ours = True
    except v.InvalidRequest:
        ours = False
    assert schema_ok == ours, obj


def test_schema_examples_are_valid():
    for ex in SCHEMA["examples"]:
        jsonschema.validate(ex, SCHEMA)
        v.validate_request(ex)


# ---- nesting depth: refused before any recursive parse -------------------------------------------

def _schema_depth(node, defs=SCHEMA["$defs"]) -> int:
    """The deepest array/object nesting the schema admits (0 for scalars)."""
    if not isinstance(node, dict):
        return 0
    if "$ref" in node:
        return _schema_depth(defs[node["$ref"].rsplit("/", 1)[1]])
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else types
    inner = [_schema_depth(s) for key in ("properties",) for s in node.get(key, {}).values()]
    inner += [_schema_depth(node["items"])] if "items" in node else []
    inner += [_schema_depth(s) for s in node.get("anyOf", [])]
    own = 1 if {"array", "object"} & set(types) else 0
    return own + max(inner, default=0)


def test_max_depth_is_the_schemas():
    assert _schema_depth(SCHEMA) == v.MAX_DEPTH == 3
    deepest = {"user_id": "u", "filters": {"include_categories": ["Comedy"]}}
    assert v.parse_request(json.dumps(deepest).encode()).include_categories == ("Comedy",)


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


DEPTH_CASES = [
    {"user_id": "1"}, {"user_id": "[[[[[[", "history": ["{{{{", "]]]]"]},
    {"user_id": 'a"[[[[\\', "history": ['\\"[[[[', "\\\\[[[["]},
    {"user_id": "x", "filters": {"include_categories": ["[", "{"]}},
    {"user_id": "x", "filters": {"include_categories": [["Comedy"]]}},
    {"user_id": "é[ü{", "history": [[[["deep"]]]]}, [[[[]]]], [[], [], [[]]], [[[]], [[]], [[]]],
    {"a": {"b": {"c": {}}}}, {"a": {"b": {"c": 1}}}, {"a": [{"b": []}]}, "[[[[[[", [], {},
    {"a": ['"', "\\", '\\"', "[]" * 10, {"b": "]]]]"}]},
]


@pytest.mark.parametrize("value", DEPTH_CASES, ids=range(len(DEPTH_CASES)))
@pytest.mark.parametrize("ascii_only", [True, False])
def test_check_depth_agrees_with_the_parsed_depth(value, ascii_only):
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    deep = _depth(value) > v.MAX_DEPTH
    for check in (lambda: v.check_depth(raw), lambda: v.check_depth(raw.decode()),
                  lambda: v.check_value_depth(value)):
        if deep:
            with pytest.raises(v.InvalidRequest) as e:
                check()
            assert e.value.reason == v.TOO_DEEP and e.value.status == 400
        else:
            check()


@pytest.mark.parametrize("raw", [b"[" * 100_000, b"[" * 4 + b"1", b"[[[[1]]" + b"]" * 10,
                                 b'{"a": [' + b"[" * 2_000_000 + b"]" * 2_000_000 + b"]}"])
def test_deep_or_unbalanced_bodies_never_reach_the_parser(raw):
    reject(raw, v.TOO_DEEP)


@pytest.mark.parametrize("raw", [b'{"user_id": "1"', b'{"user_id": "[[[[[[', b"[[1]",
                                 b'{"user_id": "1"}}}}}]]]'])
def test_shallow_malformed_bodies_keep_the_parsers_message(raw):
    reject(raw, v.NOT_JSON)


def test_decoded_value_deeper_than_the_stack():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    reject({"user_id": "1", "history": deep}, v.TOO_DEEP, content_type="application/json")


def test_check_depth_handles_a_4mib_body_of_ids():
    body = json.dumps({"user_id": "1", "history": [f"{i:07d}" for i in range(400_000)]}).encode()
    assert len(body) > 4_000_000
    v.check_depth(body)  # a list of ids is depth 2
    v.check_depth(body.replace(b'"0000001"', b'[["0000001"]]'), max_depth=4)
    with pytest.raises(v.InvalidRequest):
        v.check_depth(body.replace(b'"0000001"', b'[["0000001"]]'))


def test_check_depth_on_random_json():
    """Seeded random values full of quotes, backslashes and brackets inside strings."""
    import random

    rnd = random.Random(0)

    def value(d: int):
        r = rnd.random()
        if d > 6 or r < 0.3:
            return rnd.choice(["a", "[", "]{", '"', "\\", 'x\\"[', 1, None, "é[", "\\\\", ""])
        if r < 0.65:
            return [value(d + 1) for _ in range(rnd.randint(0, 3))]
        return {rnd.choice(["a", "[", '"{', "\\", "b"]): value(d + 1) for _ in range(rnd.randint(0, 3))}

    for _ in range(3000):
        obj = value(1)
        raw = json.dumps(obj, ensure_ascii=rnd.random() < 0.5).encode()
        try:
            v.check_depth(raw)
            refused = False
        except v.InvalidRequest:
            refused = True
        assert refused == (_depth(obj) > v.MAX_DEPTH), raw


# ---- the catalog mode ------------------------------------------------------------------------

def test_catalog_pages_are_a_mode_of_their_own():
    assert parse({"catalog": {}}).catalog == (0, v.MAX_CATALOG_PAGE)
    assert parse({"catalog": None}).catalog == (0, v.MAX_CATALOG_PAGE)
    assert parse({"catalog": {"offset": 8000, "limit": 10}}).catalog == (8000, 10)
    for bad in ({"catalog": {"offset": -1}}, {"catalog": {"limit": 0}},
                {"catalog": {"limit": v.MAX_CATALOG_PAGE + 1}}, {"catalog": {"offset": "0"}},
                {"catalog": {"page": 1}}, {"catalog": [0, 10]},
                {"catalog": {}, "user_id": "u"}, {"catalog": {}, "k": 3}):
        reject(bad, v.BAD_CATALOG)

