"""How far a simulated fleet got: the resume file of ``finops simulate --resume-file``.

A simulation is a pure function of its config (``producers/simulator.py``): the same config yields the same events
in the same order under the same ids. So "how far did it get" is one number, ``done``: the events of the sequence
already taken care of (sent, or deliberately skipped with ``--skip-before``). A restarted run with the same config
skips the first ``done`` events and continues with the next one; nothing it already sent is sent again.

Guarantee: ``done`` is written only after the sink confirmed every event before it (``flush`` returned 0: each
one acknowledged by the broker or kept in the producer's disk spool), and the file is replaced atomically. So a
crash or kill -9 loses at most the progress since the last save: the next run re-sends those events under their
same ids, and the ledger and detection drop them by event id (DESIGN §5). A resume file of another config (other
flags, another start) is refused, never silently applied.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError

__all__ = ["ProgressCheckpoint", "SimulationProgress", "load_progress"]


@dataclass(frozen=True)
class SimulationProgress:
    """What a resume file says about one simulation (``run_id``, the config's fingerprint).

    ``done`` = ``emitted`` + ``skipped``: the length of the prefix of the event sequence already taken care of;
    ``through`` the event time of its last event; ``finished`` once the whole sequence is done.
    """

    run_id: str
    done: int = 0
    emitted: int = 0
    skipped: int = 0
    through: datetime | None = None
    finished: bool = False

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["through"] = self.through.isoformat() if self.through else None
        return out


def load_progress(path: Path, run_id: str) -> SimulationProgress:
    """The progress recorded in ``path`` for ``run_id``; a fresh one (nothing done) when the file does not exist.

    Raises ConfigError when the file cannot be read or parsed, or belongs to another simulation config.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return SimulationProgress(run_id)
    except OSError as err:
        raise ConfigError(f"cannot read the resume file {path}: {err}") from err
    try:
        data = json.loads(text)
        through = data.get("through")
        progress = SimulationProgress(
            run_id=str(data["run_id"]), done=int(data["done"]), emitted=int(data.get("emitted", data["done"])),
            skipped=int(data.get("skipped", 0)), through=datetime.fromisoformat(through) if through else None,
            finished=bool(data.get("finished", False)),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"the resume file {path} is not a simulate resume file ({err}); delete it to start the "
                          "simulation from its first event") from err
    if progress.run_id != run_id:
        raise ConfigError(f"the resume file {path} belongs to simulation {progress.run_id}, not to this one "
                          f"({run_id}): the flags (seed, fleet, start, duration, misbehaviours) differ. Use the "
                          "flags of that run, or another --resume-file to start from the first event")
    return progress


class ProgressCheckpoint:
    """Counts what one run does with the event sequence and saves it to the resume file.

    Use: ``events = checkpoint.resume(all_events, skip_before)``, then after each emit :meth:`emitted`, and
    :meth:`maybe_save` now and then; :meth:`save` once the sink is closed without loss. ``flush`` is the sink's
    barrier (returns how many events are not yet safe); a save happens only when it returns 0.
    """

    def __init__(self, path: Path, start: SimulationProgress, *, flush: Callable[[], int] | None = None,
                 interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.start = start
        self.progress = start
        self.flush = flush
        self._interval_s = interval_s
        self._clock = clock
        self._last_save = clock()

    def resume(self, events: Iterable[dict[str, Any]], skip_before: datetime | None = None
               ) -> Iterator[dict[str, Any]]:
        """Yield the events still to send: the first ``start.done`` are dropped (sent by an earlier run), then
        those before ``skip_before`` are counted as skipped (events come in time order, so these are a prefix)."""
        for index, event in enumerate(events):
            if index < self.start.done:
                continue
            if skip_before is not None and event["occurred_at"] < skip_before:
                p = self.progress
                self.progress = replace(p, done=p.done + 1, skipped=p.skipped + 1, through=event["occurred_at"])
                continue
            yield event

    def emitted(self, event: dict[str, Any]) -> None:
        """Record that ``event``, the next one of the sequence, was handed to the sink."""
        p = self.progress
        self.progress = replace(p, done=p.done + 1, emitted=p.emitted + 1, through=event["occurred_at"])

    def maybe_save(self) -> None:
        """Save when ``interval_s`` has passed and the sink's flush says every event so far is safe."""
        if self._clock() - self._last_save < self._interval_s:
            return
        self._last_save = self._clock()
        if self.flush is None or self.flush() == 0:
            self.save()

    def save(self, *, finished: bool = False) -> None:
        """Write the progress (atomically: a temporary file renamed over the old one). Raises ConfigError."""
        if finished:
            self.progress = replace(self.progress, finished=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.progress.to_json(), indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as err:
            raise ConfigError(f"cannot write the resume file {self.path}: {err}; choose a writable path") from err
