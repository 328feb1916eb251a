"""One Markdown table helper, padded for a terminal or compact for generated doc blocks."""
from __future__ import annotations

from common.tables import replace_block, table


def test_padded_table_right_aligns_numbers():
    assert table(["model", "n", "recall"], [["a", 1200, 0.12345], ["bb", 3, 0.5]]).splitlines() == [
        "| model |     n | recall |",
        "|-------|------:|-------:|",
        "| a     | 1,200 | 0.1235 |",
        "| bb    |     3 |    0.5 |"]


def test_compact_table_takes_cells_as_given():
    assert table(["", "x", "y"], [["p99", "1.0 ms", "2.0 ms"]], right={1}, pad=False).splitlines() == [
        "|  | x | y |", "|---|---:|---|", "| p99 | 1.0 ms | 2.0 ms |"]


def test_replace_block():
    text = "a\n<!-- t -->\nold\n<!-- /t -->\nb\n"
    assert replace_block(text, "t", "new") == "a\n<!-- t -->\nnew\n<!-- /t -->\nb\n"
