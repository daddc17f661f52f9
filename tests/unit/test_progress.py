"""tgan.progress: off a terminal one line every every_s seconds (plus the first and the last) with
count, pace, images/s, ETA, the loss terms and the latest validation metrics; on a terminal a tqdm
bar. tgan.runinfo: run.json phases, start and machine."""
import io
import json
import re

from tgan import runinfo
from tgan.progress import Progress, format_duration


def test_lines_off_a_terminal_carry_count_pace_eta_losses_and_the_latest_validation_metric(monkeypatch):
    clock = iter([100.0, 102.0, 103.0, 105.0, 114.0, 115.0])  # construction, then one reading per update
    monkeypatch.setattr("tgan.progress.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    p = Progress(10, desc="train", initial=0, images_per_unit=32, every_s=10, stream=out)
    assert p.bar is None  # a StringIO is no terminal
    p.update(1, {"loss/d": 0.61, "loss/g": 3.24, "perf/step_time_s": 2.0})   # t=102: the first line
    p.update(2, {"loss/d": 0.6, "val/map": 0.5312})                            # t=103: a new validation metric
    p.update(3, {"loss/d": 0.6, "val/map": 0.5312})                            # t=105: within 10 s, quiet
    p.update(6, {"loss/d": 0.5, "loss/g": 3.0})                                # t=114: 11 s later
    p.update(10, {"loss/d": 0.4, "loss/g": 2.9})                               # t=115: the last step
    assert out.getvalue().splitlines() == [
        "train 1/10 (10%) | 2 s/step | 16 img/s | ETA 18s | d 0.61 g 3.24",
        "train 2/10 (20%) | 1 s/step | 32 img/s | ETA 8s | d 0.6 | val/map 0.5312",
        "train 6/10 (60%) | 2.75 s/step | 12 img/s | ETA 11s | d 0.5 g 3 | val/map 0.5312",  # 4 steps in 11 s
        "train 10/10 (100%) | 0.25 s/step | 128 img/s | ETA 0s | d 0.4 g 2.9 | val/map 0.5312",
    ]


def test_a_terminal_gets_a_tqdm_bar_with_the_losses_in_its_postfix():
    out = io.StringIO()
    p = Progress(4, desc="train", initial=1, stream=out, tty=True)
    p.update(2, {"loss/d": 0.61})
    p.update(4, {"loss/d": 0.5})
    p.close()
    text = out.getvalue()
    assert "\r" in text and "4/4" in text and "d 0.5" in text


def test_durations_read_at_a_glance():
    assert [format_duration(s) for s in (0, 42.4, 61, 3599, 7500)] == ["0s", "42s", "1m01s", "59m59s", "2h05m"]


def test_run_json_appends_phases_keeps_the_earliest_start_and_the_first_machine(tmp_path, monkeypatch):
    now = iter([1000.0, 1010.0, 1100.0, 1200.0])
    monkeypatch.setattr("tgan.runinfo.time.time", lambda: next(now))
    runinfo.record_phase(tmp_path, "data_prep", 2.0)                            # started 998
    runinfo.record_phase(tmp_path, "training", 7.5, steps=[0, 40])
    summary = runinfo.record_phase(tmp_path, "ray_fit", 105.0)                  # began at 995: before the rest
    assert summary == json.loads((tmp_path / "run.json").read_text())
    assert summary["started_unix"] == 995.0 and summary["started"].startswith("1970-01-01T00:16:35")
    assert [(p["phase"], p["seconds"]) for p in summary["phases"]] == [("data_prep", 2.0), ("training", 7.5),
                                                                        ("ray_fit", 105.0)]
    assert summary["phases"][1]["steps"] == [0, 40]
    machine = summary["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch"] and machine["ray"] and len(machine["load_average"]) == 3
    line = runinfo.describe(runinfo.record_phase(tmp_path, "training", 60.0))   # a resumed run: summed
    assert re.search(r"data prep 2s, training 1m08s, ray fit 1m45s; on \S+ \(\d+ CPUs, load [\d. ]+ at start, "
                     r"(no GPU|.+); torch \S+, ray \S+\)$", line), line
