"""`smart-dispatch send`: an audience file of any size through `DispatchBatch`.

    smart-dispatch send --audience people.jsonl --category marketing [--template spring-sale]
                        [--campaign spring-2026] [--target 127.0.0.1:50051] [--batch 500]
                        [--token-env SD_TOKEN]

The audience is JSON lines or CSV, a person per line:

    {"user_id": "u1", "timezone": "Europe/Berlin", "locale": "de", "addresses": {"email": "a@b.c"},
     "attributes": {"plan": "pro"}, "data": {"first_name": "Ada"}}

    user_id,timezone,locale,address.email,address.sms,attr.plan,data.first_name   (CSV header)

Each person's message id is `<campaign>:<user_id>`, so running the same campaign again (after an
interruption, or twice) sends nobody twice: what went before comes back as a duplicate. Progress
(done, rate, ETA) goes to standard error; the end is a table of outcomes by state and channel,
and the reasons messages were deferred or suppressed. Exit 1 when any row was refused.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from smart_dispatch.errors import ConfigurationError

MAX_BATCH = 1000


@dataclass
class Tally:
    rows: int = 0
    states: Counter[str] = field(default_factory=Counter)
    channels: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"{'outcome':<28} {'messages':>10}", "-" * 39]
        lines += [f"{state:<28} {n:>10,}" for state, n in self.states.most_common()]
        if self.channels:
            lines += ["", f"{'channel (queued, scheduled)':<28} {'messages':>10}", "-" * 39]
            lines += [f"{channel:<28} {n:>10,}" for channel, n in self.channels.most_common()]
        if self.reasons:
            lines += ["", f"{'reason (deferred, suppressed)':<28} {'messages':>10}", "-" * 39]
            lines += [f"{reason:<28} {n:>10,}" for reason, n in self.reasons.most_common(10)]
        return "\n".join(lines)


def audience(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, person) for every row of a .jsonl or .csv file. Raises ConfigurationError
    naming the file and line for a row that cannot be read."""
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the audience: {exc.strerror or exc}") from exc
    with handle:
        if path.suffix == ".csv":
            for line, row in enumerate(csv.DictReader(handle), start=2):
                yield line, _from_csv(row)
        elif path.suffix in (".jsonl", ".ndjson"):
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    person = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ConfigurationError(f"{path}:{line}: not JSON: {exc.msg}") from exc
                if not isinstance(person, dict):
                    raise ConfigurationError(f"{path}:{line}: a person is a JSON object")
                yield line, person
        else:
            raise ConfigurationError(f"{path}: an audience is .jsonl or .csv")


def _from_csv(row: dict[str, str]) -> dict[str, Any]:
    person: dict[str, Any] = {"addresses": {}, "attributes": {}, "data": {}}
    for key, value in row.items():
        if value in (None, ""):
            continue
        group, dot, name = key.partition(".")
        if dot and group in ("address", "attr", "data"):
            person[{"address": "addresses", "attr": "attributes", "data": "data"}[group]][name] = value
        else:
            person[key] = value
    return person


def send(
    path: Path,
    category: str,
    *,
    template: str = "",
    campaign: str = "",
    target: str = "127.0.0.1:50051",
    batch: int = 500,
    token: str = "",
    progress: TextIO = sys.stderr,
) -> int:
    import grpc
    from google.protobuf import json_format

    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc

    if not 1 <= batch <= MAX_BATCH:
        raise ConfigurationError(f"--batch: from 1 to {MAX_BATCH}, got {batch}")
    campaign = campaign or f"{category}-{path.stem}"
    total = sum(1 for _ in audience(path))  # reads the file once more: for the ETA, and errors first
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    tally = Tally()
    started = time.monotonic()

    def request_of(line: int, person: dict[str, Any]) -> pb.DispatchRequest:
        user_id = str(person.get("user_id", ""))
        message = pb.Message(id=f"{campaign}:{user_id}", category=category, template=template)
        if person.get("data"):
            message.data.update(person["data"])
        recipient = pb.Recipient(
            user_id=user_id,
            timezone=str(person.get("timezone", "")),
            locale=str(person.get("locale", "")),
            addresses={str(k): str(v) for k, v in (person.get("addresses") or {}).items()},
        )
        if person.get("attributes"):
            recipient.attributes.update(person["attributes"])
        return pb.DispatchRequest(message=message, recipient=recipient)

    def show() -> None:
        elapsed = max(1e-9, time.monotonic() - started)
        rate = tally.rows / elapsed
        left = (total - tally.rows) / rate if rate else 0.0
        text = (
            f"sent {tally.rows:,}/{total:,} ({tally.rows / max(1, total):.0%}) {rate:,.0f}/s ETA {left:,.0f}s"
        )
        end = "" if progress.isatty() else "\n"
        print(("\r" if progress.isatty() else "") + text, end=end, file=progress, flush=True)

    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = pb_grpc.SmartDispatchServiceStub(channel)
        rows: list[tuple[int, dict[str, Any]]] = []

        def flush() -> None:
            try:
                requests = [request_of(line, person) for line, person in rows]
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(f"{path}: rows {rows[0][0]}-{rows[-1][0]}: {exc}") from exc
            response = stub.DispatchBatch(
                pb.DispatchBatchRequest(requests=requests), metadata=metadata, timeout=300
            )
            for (line, _), result in zip(rows, response.results, strict=True):
                _count(tally, line, result, json_format)
            tally.rows += len(rows)
            rows.clear()
            show()

        try:
            for line, person in audience(path):
                rows.append((line, person))
                if len(rows) == batch:
                    flush()
            if rows:
                flush()
        except grpc.RpcError as exc:
            print(f"\nsmart-dispatch send: {exc.code().name}: {exc.details()}", file=sys.stderr)
            print(
                f"{tally.rows:,} rows done; run the same command again to go on (nobody is sent twice)",
                file=sys.stderr,
            )
            return 1
    if progress.isatty():
        print(file=progress)
    print(tally.table())
    for error in tally.errors[:10]:
        print(error, file=sys.stderr)
    if len(tally.errors) > 10:
        print(f"... and {len(tally.errors) - 10} more refused rows", file=sys.stderr)
    return 1 if tally.errors else 0


def _count(tally: Tally, line: int, result: Any, json_format: Any) -> None:
    if result.WhichOneof("result") == "error":
        tally.states["refused"] += 1
        tally.errors.append(f"line {line}: {result.error.code}: {result.error.message}")
        return
    dispatch = result.dispatch
    if dispatch.duplicate:
        tally.states["already sent (same campaign)"] += 1
        return
    state = json_format.MessageToDict(dispatch.status, preserving_proto_field_name=True).get("state", "")
    state = state.removeprefix("DISPATCH_STATE_").lower()
    tally.states[state] += 1
    if state in ("queued", "scheduled") and dispatch.decision.steps:
        tally.channels[dispatch.decision.steps[0].channel] += 1
    if state in ("scheduled", "suppressed"):
        for reason in dispatch.decision.reasons:
            if reason.code != "channel_selected":
                tally.reasons[reason.code] += 1


def token_from(env_name: str) -> str:
    return os.environ.get(env_name, "") if env_name else ""
