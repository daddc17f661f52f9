"""What a person watching a run sees: one progress display per long phase (training, evaluation,
data preparation), written by one process only (rank 0 in a distributed run).

On a terminal it is a tqdm bar (tqdm computes rate and ETA; the loss terms ride in its postfix).
Anywhere else (a Ray Train worker, whose output Ray forwards to the driver's console; `ray job
submit`; a pod log; a file) a bar would be a stream of carriage returns, so it is one line every
`every_s` seconds, plus the first and the last update and one whenever new validation metrics
(val/* scalars) arrive:

    train 120/3000 (4%) | 0.41 s/step | 312 img/s | ETA 19m40s | d 0.61 g 3.24 triplet 0.052 | val/map 0.531

s/step and images/s are measured over the steps since the previous line (the current pace, which
on a shared machine drifts), and the ETA extrapolates that pace to the remaining steps.
"""
from __future__ import annotations

import sys
import time
from typing import Mapping, TextIO

from tqdm import tqdm

DEFAULT_EVERY_S = 10.0
"""Seconds between progress lines off a terminal: a pod log of a 30-minute run stays ~200 lines."""


def format_duration(seconds: float) -> str:
    """42s, 19m40s, 2h05m: short enough for a progress line, exact enough for an ETA."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def describe_scalars(scalars: Mapping[str, float], validation: Mapping[str, float]) -> str:
    """The loss terms ("loss/d" -> "d 0.61") and the latest validation metrics ("val/map 0.531")."""
    parts = []
    terms = " ".join(f"{k.removeprefix('loss/')} {v:.3g}" for k, v in scalars.items() if k.startswith("loss/"))
    if terms:
        parts.append(terms)
    if validation:
        parts.append(" ".join(f"{k} {v:.4g}" for k, v in validation.items()))
    return " | ".join(parts)


class Progress:
    """Progress of `total` units (steps, images, stages) from `initial` on (a resumed run starts later).

    `update(done, scalars, note)` after each unit: `done` is the absolute count, `scalars` the
    latest loop scalars (loss/* terms are shown; val/* keys are remembered until newer ones come),
    `note` a word on what is being done (evaluation stages). `images_per_unit` > 0 adds img/s.
    """

    def __init__(self, total: int, *, desc: str, initial: int = 0, unit: str = "step", images_per_unit: int = 0,
                 every_s: float = DEFAULT_EVERY_S, stream: TextIO | None = None, tty: bool | None = None):
        self.total, self.desc, self.unit, self.images_per_unit = total, desc, unit, images_per_unit
        self.every_s = every_s
        self.stream = stream if stream is not None else sys.stdout
        tty = self.stream.isatty() if tty is None else tty
        self.bar = (tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True,
                         unit_scale=unit == "img") if tty else None)
        self.validation: dict[str, float] = {}
        self.last_done, self.last_time, self.printed = initial, time.monotonic(), False

    def update(self, done: int, scalars: Mapping[str, float] | None = None, note: str = "") -> None:
        scalars = scalars or {}
        validation = {k: v for k, v in scalars.items() if k.startswith("val/")}
        new_validation = any(self.validation.get(k) != v for k, v in validation.items())
        self.validation.update(validation)
        extra = " | ".join(p for p in (describe_scalars(scalars, self.validation), note) if p)
        if self.bar is not None:
            self.bar.set_postfix_str(extra, refresh=False)
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        due = (not self.printed or new_validation or now - self.last_time >= self.every_s
               or (done >= self.total and done != self.last_done))
        if not due:
            return
        print(self.line(done, now, extra), file=self.stream, flush=True)
        self.last_done, self.last_time, self.printed = done, now, True

    def line(self, done: int, now: float, extra: str) -> str:
        """The off-terminal line: count, pace since the previous line, ETA, then `extra`."""
        parts = [f"{self.desc} {done}/{self.total} ({100 * done / max(self.total, 1):.0f}%)"]
        units, seconds = done - self.last_done, now - self.last_time
        if units > 0 and seconds > 0:
            pace = seconds / units
            # Fast units (images) read better as a rate, slow ones (steps) as seconds each.
            parts.append(f"{1 / pace:.3g} {self.unit}/s" if pace < 0.1 else f"{pace:.3g} s/{self.unit}")
            if self.images_per_unit:
                parts.append(f"{self.images_per_unit / pace:.0f} img/s")
            parts.append(f"ETA {format_duration(pace * (self.total - done))}")
        if extra:
            parts.append(extra)
        return " | ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
