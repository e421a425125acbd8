"""`smart-dispatch send`: an audience file through DispatchBatch against a real sidecar, with a
summary an operator reads, a refused row reported by line, and a second run sending nobody twice."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.support.sidecar import sidecar

ROOT = Path(__file__).resolve().parents[2]


def send(address: str, audience: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smart_dispatch", "send", "--audience", str(audience), "--category",
         "marketing", "--campaign", "spring", "--target", address, "--batch", "3", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def count(table: str, outcome: str) -> int:
    """The number on the summary table's line for `outcome` (0 when absent)."""
    found = re.search(rf"^{re.escape(outcome)}\s+([\d,]+)$", table, re.MULTILINE)
    return int(found.group(1).replace(",", "")) if found else 0


def test_a_campaign_goes_out_once_with_a_summary_and_refused_rows_by_line(tmp_path: Path):
    people = [
        {
            "user_id": f"p{i}",
            "timezone": "UTC",
            "addresses": {"email": f"p{i}@example.com", "sms": "+15550100"},
        }
        for i in range(6)
    ]
    people.insert(3, {"timezone": "UTC", "addresses": {"email": "nobody@example.com"}})  # no user_id
    audience = tmp_path / "people.jsonl"
    audience.write_text("".join(json.dumps(p) + "\n" for p in people))

    with sidecar("--rules", "rules") as running:
        first = send(running.address, audience)
        again = send(running.address, audience)

    assert first.returncode == 1, first.stderr  # one row refused
    assert "sent 7/7 (100%)" in first.stderr
    assert "line 4: INVALID_ARGUMENT:" in first.stderr and "user_id" in first.stderr
    assert count(first.stdout, "refused") == 1
    assert sum(count(first.stdout, state) for state in ("queued", "scheduled", "suppressed")) == 6
    assert count(again.stdout, "already sent (same campaign)") == 6


def test_a_csv_audience_reads_addresses_attributes_and_data_from_its_columns(tmp_path: Path):
    audience = tmp_path / "people.csv"
    audience.write_text(
        "user_id,timezone,address.email,attr.plan,data.first_name\nc1,UTC,c1@example.com,pro,Ada\n"
    )

    with sidecar("--rules", "rules") as running:
        result = send(running.address, audience)

    assert result.returncode == 0, result.stderr
    assert "sent 1/1 (100%)" in result.stderr
