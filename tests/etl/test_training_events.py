"""The gateway's training-event log is raw data for the ETL: written by the gateway's own writer,
read by ``prepare`` together with the original events (one raw table, the same rules)."""
from __future__ import annotations

from pathlib import Path

from etl.config import PrepareConfig
from gateway.logs import JsonlLog, open_private
from gateway.records import TrainingEvent, training_event_dict
from tests.etl.conftest import T0, good_events, read, run_prepare, write_inputs


def write_training_log(folder: Path, events: list[TrainingEvent], bad_line: bytes = b"") -> Path:
    log = JsonlLog(folder, "training-events", training_event_dict, opener=open_private)
    for e in events:
        assert log.submit(e)
    assert log.close(10)
    if bad_line:
        (next(folder.glob("*.jsonl"))).open("ab").write(bad_line)
    return folder


def test_the_training_event_log_is_ingested_with_the_original_events(spark, tmp_path):
    events, catalog = write_inputs(tmp_path, good_events(users=4, per_user=8))
    # users 1 and 7 act on the live site: 1 is known, 7 is new (and has enough events)
    live = [TrainingEvent("1", str(i), "click", T0 + 10**7 + i) for i in (11, 12)]
    live += [TrainingEvent("7", str(i), t, T0 + 10**7 + i) for i, t in
             ((3, "view"), (4, "click"), (5, "add_to_cart"), (6, "purchase"))]
    live += [TrainingEvent("7", "999", "click", T0 + 10**7)]          # not in the catalog
    training = write_training_log(tmp_path / "training-events", live, b"{not json\n")
    cfg = PrepareConfig(min_user_positives=3, min_doc_freq=1)
    result, layout = run_prepare(spark, tmp_path, [events, training], catalog, cfg)
    assert result.counts["input"] == 32 + len(live) + 1
    assert result.quarantine_reasons == {"malformed_line": 1, "unknown_item": 1}
    inter = read(layout.interactions)
    users = dict(zip(read(layout.user_map).user_idx, read(layout.user_map).user_id))
    got = {(users[u], int(t)) for u, t in zip(inter.user_idx, inter.timestamp)}
    assert {("1", T0 + 10**7 + 11), ("1", T0 + 10**7 + 12)} <= got
    weights = dict(zip(inter[inter.user_idx.map(users) == "7"].timestamp.astype(int) - T0 - 10**7,
                       inter[inter.user_idx.map(users) == "7"].weight))
    assert weights == {3: 1.0, 4: 2.0, 5: 4.0, 6: 8.0}   # the implicit event weights
