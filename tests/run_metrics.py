"""Reading a run directory's metrics.jsonl in tests."""
import json
from pathlib import Path


def per_step(out) -> list[dict]:
    """metrics.jsonl rows without what varies between equal runs (timings, wall-clock stamps)."""
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/") and k not in ("time", "elapsed_s")} for r in rows]
