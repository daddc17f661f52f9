"""index.html of an evaluation directory: the table, the pictures with a line each on how to read
them, and the run's summary (tgan.runinfo: phase times and machine). One self-contained page with
relative links, so the directory can be copied or served as it is.

Each picture reports its own pixel size in its caption once the browser has loaded it, and says
"missing" when it could not be loaded (a report copied without its PNGs).
"""
from __future__ import annotations

import html
from pathlib import Path

from tgan import runinfo
from tgan.progress import format_duration

CAPTIONS = {
    "samples": "Samples G(z) from fixed z (the same z for every checkpoint of a run, so successive "
               "evaluations are comparable). Look for variety and the data's classes, not copies of one image.",
    "interpolation": "Each row walks in a straight line from z_left (left column) to z_right (right column). "
                     "Smooth changes mean a smooth latent space; abrupt jumps or repeated images mean mode collapse.",
    "reconstructions": "Test images x next to G(E(x)). A good BiGAN keeps the class and the rough shape, "
                       "not the pixels: the encoder captures semantics.",
    "grad_norm_G": "Generator gradient norm per logged step (MBGAN Fig. 6). A steady or slowly varying "
                   "level is healthy; a collapse to 0 means D gives G no signal, spikes mean instability.",
    "loss_curves": "Loss terms, gradient norms and validation metrics against step. Healthy: loss/d and "
                   "loss/g level off without one going to 0 (a D loss near 0 means D wins and G learns "
                   "nothing); the triplet loss falls.",
}
STYLE = ("body{font-family:sans-serif;max-width:70em;margin:1em auto;padding:0 1em}"
         "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.2em .6em}td{text-align:right}"
         "td:first-child{text-align:left}figure{display:inline-block;margin:1em;vertical-align:top;max-width:45em}"
         "img{max-width:100%}figcaption{font-size:.9em}.missing{color:#b00}")
ON_LOAD = ("this.nextElementSibling.querySelector('.size').textContent="
           "' ('+this.naturalWidth+'x'+this.naturalHeight+' px)'")
ON_ERROR = ("this.nextElementSibling.querySelector('.size').textContent=' (missing)';"
            "this.nextElementSibling.classList.add('missing')")


def _table(table_id: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _run_section(summary: dict) -> str:
    if not summary:
        return "<p>No run.json next to this evaluation (evaluated outside its run directory).</p>"
    rows = [[e["phase"].replace("_", " "), format_duration(e["seconds"]), e.get("host", ""),
             e.get("finished", "")] for e in summary.get("phases", [])]
    return (f"<p>{html.escape(runinfo.describe(summary))}</p>"
            + _table("phases", ["phase", "took", "host", "finished"], rows))


def write_report(out: Path, result: dict, header: list[str], rows: list[list[str]], *, run_dir: Path) -> Path:
    """Write <out>/index.html for `result` (evaluate()'s dict) and the table cells; `run_dir`
    holds the run's run.json."""
    n_test, n_train = result["num_test"], result["num_train"]
    parts = [f"<h1>{html.escape(result['family'])} evaluation</h1>"]
    if rows:
        parts += [f"<p>{n_test} test queries against {n_train} training images (the gallery and the probe's "
                  f"training set); accuracy, mAP and probe in %: one query is {100 / max(n_test, 1):.2g} points. "
                  "<b>random-init</b> rows are the same networks at the weights training started from, "
                  "<b>raw pixels</b> the images themselves: a learned feature is worth something only where "
                  "it beats both.</p>", _table("eval-table", header, rows)]
    else:
        parts.append(f"<p>{html.escape(result.get('note', ''))}</p>")
    for name, path in result["pictures"].items():
        src = html.escape(Path(path).name)
        parts.append(f'<figure><img src="{src}" alt="{html.escape(name)}" onload="{ON_LOAD}" onerror="{ON_ERROR}">'
                     f'<figcaption><b>{src}</b><span class="size"></span>: '
                     f'{html.escape(CAPTIONS.get(name, ""))}</figcaption></figure>')
    if not result["pictures"]:
        parts.append("<p>No pictures: eval.pictures is off.</p>")
    parts += ["<h2>Run</h2>", _run_section(runinfo.load(run_dir)),
              f"<p>Evaluation took {format_duration(result.get('seconds', 0))}.</p>"]
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(result['family'])} evaluation"
            f"</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    path = out / "index.html"
    path.write_text(page)
    return path
