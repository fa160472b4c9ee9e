"""Read what an offline W&B run wrote, from its ``run-<id>.wandb`` file.

wandb >= 0.19 writes through its Go core and ships no Python reader for these
files. They are a LevelDB-style log (32 KiB blocks; each record a 7-byte header:
CRC32C, length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte ``:W&B`` header,
each payload a ``wandb_internal_pb2.Record``: small enough to read here.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            break  # a record still being written
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            records.append(record)
            pending = b""
        else:
            pending += chunk
    return records


def finished_records(path: Path, timeout: float = 60.0) -> list[wandb_internal_pb2.Record]:
    """The run's records once its ``exit`` record is on disk: W&B's core process may still be
    flushing the file for a while after ``finish()`` has returned (minutes on a loaded machine, so
    the wait scales with the load, as the suite's other limits do)."""
    from conftest import limit

    deadline = time.monotonic() + limit(timeout)
    while True:
        records = read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            kinds = sorted({r.WhichOneof("record_type") for r in records})
            raise AssertionError(f"{path}: W&B never finished writing it (records so far: {kinds})")
        time.sleep(0.2)


def offline_run(run_dir: str | Path) -> dict[str, Any]:
    """History rows, config, summary and artifact names of the single offline run under ``run_dir``."""
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no offline W&B run under {run_dir}"
    history, config, summary, artifacts, run = [], {}, {}, [], {}
    for record in finished_records(files[-1]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        if kind == "run":
            run = {
                "project": record.run.project,
                "group": record.run.run_group,
                "tags": list(record.run.tags),
            }
        if kind in ("run", "config"):  # the run record carries wandb.init's config
            updates = record.run.config.update if kind == "run" else record.config.update
            for item in updates:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "artifact":
            artifacts.append(record.artifact.name)
    return {"history": history, "config": config, "summary": summary, "artifacts": artifacts, **run}
