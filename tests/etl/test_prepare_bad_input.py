"""Bad input ends in quarantine (with a reason and counts) or in a clear error: never lost."""
from __future__ import annotations

import pytest

from etl.config import PrepareConfig
from common.schema import Reason
from etl.readers import InputError

from .conftest import T0, good_events, read, run_prepare, write_inputs

BAD_ROWS = {
    # row                                                    expected reason
    f"1,2,view,,{T0},extra": Reason.MALFORMED,                 # too many fields
    "1,2": Reason.MALFORMED,                                    # too few fields
    f'1,"3,view,,{T0}': Reason.MALFORMED,                       # unbalanced quote
    f"{'u' * 257},2,view,,{T0}": Reason.BAD_USER,               # 257 characters (max 256)
    f"a\tb,2,view,,{T0}": Reason.BAD_USER,                      # a control character
    f"   ,2,view,,{T0 + 1}": Reason.MISSING_USER,                    # CSV fields are trimmed: empty
    f"1,\u00a0\u3000,view,,{T0}": Reason.BAD_ITEM,              # only (Unicode) white space
    f"1,x\x7fy,view,,{T0}": Reason.BAD_ITEM,                    # DEL is a control character
    f"1,1.5,view,,{T0}": Reason.UNKNOWN_ITEM,                   # a valid id, not in the catalog
    f",2,view,,{T0}": Reason.MISSING_USER,
    f"1,2,like,,{T0}": Reason.BAD_EVENT_TYPE,
    "1,2,view,,yesterday": Reason.BAD_TIMESTAMP,
    "1,2,view,,4102444800": Reason.BAD_TIMESTAMP,                # 2100-01-01: in the future
    "1,2,view,,86400": Reason.BAD_TIMESTAMP,                     # 1970: before min_timestamp
    f"1,2,rating,abc,{T0}": Reason.BAD_RATING,                   # wrong type
    f"1,2,rating,,{T0}": Reason.BAD_RATING,                      # rating event without rating
    f"1,2,rating,7.5,{T0}": Reason.RATING_OUT_OF_RANGE,
    f"1,2,rating,-1,{T0}": Reason.RATING_OUT_OF_RANGE,
    f"1,999,view,,{T0}": Reason.UNKNOWN_ITEM,                    # not in the catalog
}
NON_UTF8 = f"1,2,vi\xe9w,,{T0}\n".encode("latin-1")  # invalid UTF-8 byte inside a field
# ids as users have them (core/ids.py): kept, canonicalized (NFC; digits lose leading zeros)
EXOTIC = {"anna@example.com": "anna@example.com", "Ju\u0308rgen": "J\u00fcrgen", "用户42": "用户42",
          "0007": "7"}
EXOTIC_ROWS = [f"{u},{i},view,,{T0 + 60 * k}" for k, u in enumerate(EXOTIC) for i in (3, 4, 5)]


@pytest.fixture(scope="module")
def messy(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    good = good_events()
    duplicates = good[:3]  # exact repeats of three valid events
    rows = good + duplicates + list(BAD_ROWS) + EXOTIC_ROWS
    events, catalog = write_inputs(root, rows, newline="\r\n", raw_bytes=NON_UTF8)
    result, layout = run_prepare(spark, root, events, catalog, PrepareConfig(min_user_positives=3))
    return result, layout, len(rows) + 1


def test_every_row_is_accounted_for(messy):
    result, _, n_rows = messy
    c = result.counts
    assert c["input"] == n_rows
    assert c["input"] == c["kept"] + c["filtered"] + c["duplicates"] + c["quarantined"]
    assert c["duplicates"] == 3
    assert c["quarantined"] == len(BAD_ROWS) + 1
    assert c["kept"] == len(good_events()) + len(EXOTIC_ROWS)


def test_ids_as_users_have_them_are_kept_canonical(messy):
    _, layout, _ = messy
    kept = read(layout.interactions)
    users = set(kept.user_id)
    assert {"anna@example.com", "J\u00fcrgen", "用户42"} <= users
    assert "Ju\u0308rgen" not in users and "0007" not in users


def test_each_bad_row_is_quarantined_with_its_reason(messy):
    _, layout, _ = messy
    q = read(layout.quarantine_events)
    assert len(q) == len(BAD_ROWS) + 1
    for row, reason in BAD_ROWS.items():
        fields = [f.strip(" ") for f in row.split(",")]  # the CSV reader trims ASCII spaces
        if reason == Reason.MALFORMED:
            match = q[q.raw_line.fillna("") == row]
        else:
            match = q[(q.user_id.fillna("") == fields[0]) & (q.item_id.fillna("") == fields[1]) &
                      (q.event_type.fillna("") == fields[2]) & (q.timestamp.fillna("") == fields[4]) &
                      (q.rating.fillna("") == fields[3])]
        assert len(match) == 1, f"row {row!r} not quarantined exactly once"
        assert reason in match.iloc[0].reason.split(";"), (row, match.iloc[0].reason)
    assert q.source_file.str.endswith("events.csv").all()


def test_non_utf8_bytes_are_quarantined(messy):
    _, layout, _ = messy
    q = read(layout.quarantine_events)
    assert q.reason.str.split(";").map(lambda r: Reason.INVALID_UTF8 in r).sum() == 1


def test_crlf_line_endings_leave_no_carriage_returns(messy):
    _, layout, _ = messy
    interactions = read(layout.interactions)
    assert not interactions.item_id.str.contains("\r").any()
    assert not read(layout.quarantine_events).timestamp.fillna("").str.contains("\r").any()


def test_reason_counts_in_result(messy):
    result, _, _ = messy
    assert result.quarantine_reasons[Reason.MALFORMED] == 3
    assert result.quarantine_reasons[Reason.BAD_TIMESTAMP] == 3  # malformed lines carry only that
    assert result.quarantine_reasons[Reason.UNKNOWN_ITEM] == 2


def test_missing_column_is_a_clear_error(spark, tmp_path):
    events, catalog = write_inputs(tmp_path, ["1,2,view,,1"], header="user_id,item_id,event_type,rating")
    with pytest.raises(InputError, match=r"missing required column\(s\) \['timestamp'\]"):
        run_prepare(spark, tmp_path, events, catalog)


def test_empty_file_is_a_clear_error(spark, tmp_path):
    events, catalog = write_inputs(tmp_path, [])
    (events / "events.csv").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        run_prepare(spark, tmp_path, events, catalog)


def test_header_only_is_a_clear_error(spark, tmp_path):
    events, catalog = write_inputs(tmp_path, [])
    with pytest.raises(InputError, match="no events"):
        run_prepare(spark, tmp_path, events, catalog)


def test_missing_input_folder_is_a_clear_error(spark, tmp_path):
    _, catalog = write_inputs(tmp_path, good_events())
    with pytest.raises(InputError, match="not found"):
        run_prepare(spark, tmp_path, tmp_path / "nope", catalog)


def test_json_lines_input_quarantines_broken_lines(spark, tmp_path):
    events = tmp_path / "ev"
    events.mkdir()
    lines = [f'{{"user_id": {u}, "item_id": "{(u + k) % 20 + 1}", "event_type": "click", '
             f'"timestamp": "{T0 + 100 * k}"}}' for u in range(1, 4) for k in range(4)]
    lines.append('{"user_id": 1, "item_id": ')
    (events / "part.jsonl").write_text("\n".join(lines) + "\n")
    _, catalog = write_inputs(tmp_path, [])
    result, layout = run_prepare(spark, tmp_path, events, catalog, PrepareConfig(min_user_positives=3))
    assert result.counts["input"] == 13
    assert result.counts["kept"] == 12
    assert read(layout.quarantine_events).reason.tolist() == [Reason.MALFORMED]


def test_bad_catalog_rows_are_quarantined(spark, tmp_path):
    catalog = ("item_id,title,description,categories,tags,created_at\n"
               + "".join(f"{i},Item {i},d,c,t,2023-01-01\n" for i in range(1, 21))
               + "x\x7fy,Control character,d,c,t,2023-01-01\n,No id,d,c,t,\n21,,d,c,t,\n5,Second copy of 5,d,c,t,2024-01-01\n")
    events, cat = write_inputs(tmp_path, good_events(), catalog=catalog)
    result, layout = run_prepare(spark, tmp_path, events, cat, PrepareConfig(min_user_positives=3))
    q = read(layout.quarantine_catalog)
    assert sorted(q.reason) == sorted([Reason.BAD_ITEM, Reason.MISSING_ITEM, Reason.MISSING_TITLE,
                                       Reason.DUPLICATE_ITEM])
    items = read(layout.items)
    assert items.loc[items.item_id == "5", "title"].item() == "Item 5"  # the earliest copy wins
    assert result.catalog == {"valid": 20, "quarantined": 4}
