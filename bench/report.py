"""docs/results.md, generated from the committed bench/results/*.json: every result file gets a
section with what it measures, when and on what machine (from the JSON), and its tables. Nothing
in results.md is written by hand; a test fails when it is stale against the JSON.

Usage: ./run bench report [--check]   (--check: exit 1 if docs/results.md differs from what the JSON gives)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Callable

from bench.common import RESULTS, table

DOCS = os.path.join(os.path.dirname(RESULTS), os.pardir, "docs")
TARGET = os.path.normpath(os.path.join(DOCS, "results.md"))


def _md(rows: list[dict], columns: list[str]) -> str:
    return table(rows, columns, "github")


def _when(r: dict) -> str:
    return f"*{r.get('date', 'undated')}, {r.get('machine', 'machine not recorded')}*"


def _what(r: dict) -> str:
    return " ".join(r.get("what", "").split())


def _cell(c: dict, metric: str) -> str:
    """A cell over seeds: mean [min, max]."""
    return f"{c[metric]:.3f} [{c['min']:.3f}, {c['max']:.3f}]"


def quality(r: dict) -> list[str]:
    from bench.quality import table as quality_table  # lazy: this benchmark's stack, imported when it runs
    from collabfeat.features import FEATURE_NAMES  # lazy: this benchmark's stack, imported when it runs

    runs = r["runs"]
    out = [_what(r)]
    main = runs.get("demo") or runs.get("seed-0")  # the newest demo recorded, else the first seed's
    if main:
        name = "demo" if "demo" in runs else "seed-0"
        out += [
            f"### The demo's table ({name}: {main['pipeline_seconds']:.0f} s of pipeline)",
            _when(main),
            "precision@10 / mAP; each facet's header gives its images and chance line.",
            quality_table(main),
            f"Targets met: {main['targets_met']} of {len(main['targets'])}.",
            _md(
                [
                    {
                        "target": c["target"],
                        "met": "met" if c["met"] else "MISSED",
                        "needed": c.get("needed"),
                        "values": ", ".join(f"{k} {v:.3f}" for k, v in c["values"]),
                    }
                    for c in main["targets"]
                ],
                ["target", "met", "needed", "values"],
            ),
        ]
    repeats = [(n, e) for n, e in runs.items() if "repeat_of" in e]
    if repeats:
        out += [
            "### Repeatability: two runs from one seed",
            _md(
                [
                    {
                        "run": n,
                        "repeat of": e["repeat_of"],
                        "identical to 3 decimals": e["identical_to_3_decimals"],
                        "pipeline s": e["pipeline_seconds"],
                        "first's pipeline s": runs[e["repeat_of"]]["pipeline_seconds"],
                    }
                    for n, e in repeats
                ],
                ["run", "repeat of", "identical to 3 decimals", "pipeline s", "first's pipeline s"],
            ),
        ]
    s = r.get("seeds")
    if s:
        facets = list(s["facets"])
        rows = [
            {
                "features": "served (" + ", ".join(sorted(set(s["served"]))) + ")",
                **{f: _cell(s["facets"][f]["table"]["served"], s["metric"]) for f in facets},
            }
        ]
        for name, label in FEATURE_NAMES.items():
            if any(name in s["facets"][f]["table"] for f in facets):
                row = {"features": label}
                for f in facets:
                    c = s["facets"][f]["table"].get(name)
                    row[f] = _cell(c, s["metric"]) if c else "-"
                rows.append(row)
        out += [
            f"### Over {s['runs']} seeds: mean [min, max] of {s['metric']}",
            "Every seed of the run (simulator, MF, CNNs) moved by 0, 1, 2 (the demo is seed 0).",
            _md(rows, ["features"] + facets),
            f"On the means: {s['targets_met']} of {len(s['targets'])} targets met, "
            f"{s['targets_beyond_range']} by a margin beyond the seeds' range.",
            _md(
                [
                    {
                        "target": c["target"],
                        "on the means": "met" if c["met"] else "MISSED",
                        "margin": c["margin"],
                        "range": c["range"],
                        "beyond the range": "yes" if c["exceeds_range"] else "no",
                    }
                    for c in s["targets"]
                ],
                ["target", "on the means", "margin", "range", "beyond the range"],
            ),
        ]
    return out


def sweep(r: dict) -> list[str]:
    from bench.sweep import markdown  # lazy: this benchmark's stack, imported when it runs

    return [_what(r), _when(r), f"{r['metric']}; a cell wins when {r['wins']}.", markdown(r)]


def gate(r: dict) -> list[str]:
    rows = []
    for t in r["trials"]:
        s, g = t["style"], t["gate"]
        rows.append(
            {
                "catalogue vendors": ", ".join(t["vendors"]),
                "unseen": t.get("unseen_vendor") or "-",
                "chance": s["chance"],
                "style-supervised": s["style_supervised"],
                "pixels": s["pixels"],
                "random-init": s["random"],
                "halfway": g["halfway"],
                "gate": "passed" if g["passed"] else "FAILED",
                "date": t["date"],
                "machine": t["machine"],
            }
        )
    return [_what(r), _md(rows, list(rows[0]))]


def finetune(r: dict) -> list[str]:
    out = [_what(r)]
    for t in r["trials"]:
        f = t["finetune"]
        out += [
            f"### {t['recipes']}" + (f" with {', '.join(t['overrides'])}" if t["overrides"] else ""),
            _when(t),
            f"fine-tuning: warm-up {f['warmup_epochs']} + {f['epochs']} epochs at {f['size']} px, AdamW "
            f"{f['learning_rate']:g} (head {f['head_learning_rate']:g}), weight decay {f['weight_decay']:g}; "
            f"distill recipe's weight {t['distill']:g}. {t.get('note', '')}".strip(),
            _md(t["rows"], ["recipe", "features", "style", "category", "unseen_style", "mean", "seconds"]),
        ]
    return out


def determinism(r: dict) -> list[str]:
    return [
        "Op determinism's cost: one small training "
        f"({r['images']} images, {r['epochs']} epochs, {r['image_size']} px) timed {r['repeats']} times each way.",
        _when(r),
        _md(
            [
                {"mode": m, "median s": r["median_seconds"][m], "runs identical": r[f"{m}_runs_identical"]}
                for m in ("deterministic", "default")
            ],
            ["mode", "median s", "runs identical"],
        ),
        f"Cost: x{r['cost_ratio']:.2f}.",
    ]


def scale(r: dict) -> list[str]:
    runs = [
        {
            "size": x.get("size") or f"x{x['multiple']}",
            "engine": x["engine"],
            "until": x["until"],
            "log rows": x["rows_in_logs"],
            "pipeline s": x["pipeline_seconds"],
            "peak RSS MB": x["peak_rss_mb"],
            "failed": x["failed"] or "",
        }
        | ({"measured": x.get("date") or r["date"]} if any("date" in x for x in r["runs"]) else {})
        for x in r["runs"]
    ]
    out = [_when(r), f"Targets: {', '.join(f'{k} {v}' for k, v in r['targets'].items())}.", _md(runs, list(runs[0]))]
    t = r["targets"]
    for x in r["runs"]:
        if x.get("size") == "behance" and not x["failed"]:
            worst = max((e["b (time)"] for e in r.get("exponents_whole_span", [])), default=None)
            out.append(
                f"At Behance size ({x['rows_in_logs']:,} log rows, {x['users']:,} users, {x['items']:,} items): "
                f"{x['pipeline_seconds']:,.0f} s against {t['behance_seconds']:,} "
                f"({'met' if x['pipeline_seconds'] <= t['behance_seconds'] else 'NOT met'}); "
                f"peak {x['peak_rss_mb']:,} MB against {t['behance_peak_rss_mb']:,} "
                f"({'met' if x['peak_rss_mb'] <= t['behance_peak_rss_mb'] else 'NOT met'})"
                + (
                    f"; the largest growth exponent from the smallest size, {worst:.3f}, against {t['exponent']} "
                    f"({'met' if worst <= t['exponent'] else 'NOT met'})."
                    if worst is not None
                    else "."
                )
            )
    made = [
        {"size": x.get("size"), "users": x["users"], "items": x["items"], **x["generation"]}
        for x in r["runs"]
        if "generation" in x
    ]
    if made:
        out += [
            "The data's generation (its own process):",
            _md(made, ["size", "users", "items", "seconds", "peak_rss_mb"]),
        ]
    stages = [c for x in r["runs"] if x["until"] == "mf" for c in x["components"] if c["state"] == "complete"]
    if stages:
        out += [
            "The behaviour path's stages (n: log rows, or pairs for Transform and MFTrainer):",
            _md(stages, ["size", "component", "n", "seconds", "n/s", "peak_rss_mb"]),
        ]
    if made and r.get("exponents_all_sizes"):
        growth = r["exponents_all_sizes"]
        out += [
            "Growth exponents (time ~ n^b) per component, between its two largest sizes:",
            _md(growth, list(growth[0])),
        ]
    if made and r.get("exponents_whole_span") and len(r["runs"]) > 2:
        growth = r["exponents_whole_span"]
        out += [
            "Growth exponents per component from its smallest size to its largest:",
            _md(growth, list(growth[0])),
        ]
    if r.get("exponents"):
        cols = list(r["exponents"][0])
        out += [
            "Growth exponents (time ~ n^b) per component, between the two largest sizes:",
            _md(r["exponents"], cols),
        ]
    return out


PAIRED_RATIOS = ["ratio median", "ratio min", "ratio max"]
COST_PARTS = ["search us", "centroids us", "one list us", "rest us"]


def ann(r: dict) -> list[str]:
    base = r["base"]
    out = [
        _what(r),
        _when(r),
        f"Real embeddings: {base[0]:,} x {base[1]} ({r['source']}). Curves: `bench/results/ann.png`.",
        _md(
            [
                {"data": s["data"], "real rows": s["real"], "noisy copies": s["items"] - s["real"]}
                | {"noise sigma / dim": f"{s['noise sigma']:.4f}", "measured": s.get("date", r.get("date"))}
                for s in r["sets"]
            ],
            ["data", "real rows", "noisy copies", "noise sigma / dim", "measured"],
        ),
        "Target, per size: " + "; ".join(r["target"]),
    ]
    pairs = [{"data": m["data"], **p} for m in r["rows"] if m.get("paired") for p in m["paired"]]
    if pairs:
        out += [
            "The target's figures timed again side by side, by queries a call (q/s at recall 0.95; "
            "ratio = ScaNN / faiss IVF):",
            _md(pairs, ["data", "batch", "scann", "scann q/s median", "faiss", "faiss q/s median"] + PAIRED_RATIOS),
        ]
    costs = [
        {"data": m["data"], "side": side, **c} for m in r["rows"] if m.get("cost") for side, c in m["cost"].items()
    ]
    if costs:
        out += [
            "Where a query's time goes at each side's cheapest setting (one leaf, one list): the search, what "
            "the same library's brute force takes to score as many rows as the index has centroids and as an "
            "average leaf holds, and the rest, the partitioned search's own cost (microseconds a query):",
            _md(costs, ["data", "side", "index", "setting", "recall", "items a list"] + COST_PARTS),
        ]
    cols = ["method", "build s", "best recall", "q/s @0.9", "q/s @0.95", "q/s @0.99"]
    for name in dict.fromkeys(m["data"] for m in r["rows"]):
        out += [f"### {name}", _md([m for m in r["rows"] if m["data"] == name], cols)]
    return out


def mf(r: dict) -> list[str]:
    out = [_when(r)]
    for name, d in r["datasets"].items():
        rows = d["rows"]
        recall = next(k for k in rows[0] if k.startswith("recall@"))
        out += [
            f"### {name}",
            f"{d['users']:,} users x {d['items']:,} items, {d['train_pairs']:,} train / {d['eval_pairs']:,} held-out "
            f"pairs, {d['threads']} threads" + (f"; {d['date']}, {d['machine']}" if "machine" in d else ""),
            _md(rows, ["model", "passes", "seconds", "runs", recall, "time vs ALS", "recall vs ALS"]),
        ]
    return out


def explorer(r: dict) -> list[str]:
    left = ", ".join(f"{k} ({v['dim']} dims: {v['gb at n']} GB)" for k, v in r["left out"].items()) or "none"
    return [
        _when(r),
        f"{r['items']:,} catalogue items grown from {r['source items']:,} real ones; index {r['index']} "
        f"({r['index mb']:.0f} MB, built in {r['index build s']:.0f} s); feature sets served: "
        f"{', '.join(r['feature sets'])}; left out (too large on disk at this size): {left}."
        + "".join(
            f" {k} is stored projected from {v['dims']} onto {v['stored dims']} dims."
            for k, v in r.get("reduced", {}).items()
        ),
        f"The explorer started in {r['start s']:.1f} s at {r['rss at start mb']:.0f} MB; its peak was "
        f"{r['peak rss mb']:.0f} MB, {r['beyond index mb']:.0f} MB beyond the index (target "
        f"{r['targets']['memory_beyond_index_mb']} MB: {'met' if r['met']['memory'] else 'not met'}).",
        _md(r["pages"], list(r["pages"][0])),
    ]


def mf_memory(r: dict) -> list[str]:
    rows = [{**x, "buckets": ", ".join(f"{k} {v}" for k, v in x["buckets"].items())} for x in r["rows"]]
    return [_what(r), _when(r), f"Run: `{r['run']}`.", _md(rows, list(rows[0]))]


def itemside(r: dict) -> list[str]:
    from bench.itemside import __doc__ as what  # lazy: this benchmark's stack, imported when it runs

    out = [" ".join(what.split("\n\n")[0].split())]
    for s in r["sizes"]:
        target = r["targets"]["memory_beyond_index_mb"]
        out += [
            f"### {s['items']:,} catalogue items",
            _when(s),
            f"{s['catalogue images']:,} catalogue images; the data made in {_secs(s['data s'])}, its records in "
            f"{_secs(s['records s'])}; the Indexer embedded the sets {', '.join(s['indexed sets'])} (not the "
            f"source run's {', '.join(x for x in r.get('source sets', []) if x not in s['indexed sets']) or '-'}; "
            "the Evaluator scores them all). The index's own "
            f"size (ScaNN files and served embeddings): {s['index mb']:.0f} MB; the pushed versions: "
            f"{s.get('versions mb', 0):.0f} MB on disk beyond the index files they link to.",
            _md(
                [
                    {
                        "step": x["step"],
                        "seconds": x["seconds"],
                        "peak RSS MB": x["peak rss mb"],
                        "of the index held MB": x["index held mb"],
                        "beyond the index MB": x["beyond index mb"],
                        f"≤ {target} MB": "met" if x["met"] else "NOT MET",
                    }
                    for x in s["steps"]
                ],
                ["step", "seconds", "peak RSS MB", "of the index held MB", "beyond the index MB", f"≤ {target} MB"],
            ),
        ]
    return out + [
        "Of the index, the Indexer holds all (it builds it), a push the memory-mapped embeddings (not the "
        "searcher), the Evaluator nothing (it reads the held-out images only)."
    ]


def _secs(v) -> str:
    return "an earlier run (reused)" if v is None else f"{v:.0f} s"


RENDER: dict[str, Callable[[dict], list[str]]] = {
    "ann": ann,
    "explorer": explorer,
    "itemside": itemside,
    "mf_memory": mf_memory,
    "mf": mf,
    "quality": quality,
    "sweep": sweep,
    "gate_emoji": gate,
    "finetune": finetune,
    "determinism": determinism,
    "scale": scale,
    "scale_behaviour_64": scale,
    "scale_behance": scale,
}
TITLES = {
    "ann": "Nearest-neighbour search: ScaNN against faiss per catalogue size",
    "explorer": "The explorer at catalogue scale",
    "itemside": "The Indexer, the Pusher and the Evaluator at catalogue scale",
    "mf": "Matrix factorisation: our weighted ALS against implicit's",
    "mf_memory": "MFTrainer's memory against its row buckets",
    "quality": "Quality: the demo's retrieval table",
    "sweep": "Where collaborative features win: the taste sweep",
    "gate_emoji": "The data gate",
    "finetune": "Fine-tuning recipes and the retrieval layer",
    "determinism": "Repeatability's cost",
    "scale": "Scale: the pipeline at multiples of the default data",
    "scale_behaviour_64": "Scale: the behaviour path at 64x",
    "scale_behance": "Scale: the behaviour path at Behance size",
}


def generic(r: dict) -> list[str]:
    flat = {k: v for k, v in r.items() if not isinstance(v, (dict, list))}
    return [_what(r), _md([flat], list(flat))] if flat else [_what(r)]


def render() -> str:
    out = [
        "# Measured results",
        "",
        "Generated by `./run bench report` from the committed `bench/results/*.json`; do not edit by hand. "
        "Each section names its result file, and the date and machine its numbers were measured on.",
        "",
    ]
    names = sorted(
        (os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(RESULTS, "*.json"))),
        key=lambda n: (list(RENDER).index(n) if n in RENDER else len(RENDER), n),
    )
    for name in names:
        with open(os.path.join(RESULTS, f"{name}.json")) as f:
            r = json.load(f)
        out += [f"## {TITLES.get(name, name)}", "", f"`bench/results/{name}.json`", ""]
        for part in RENDER.get(name, generic)(r):
            if part:
                out += [part, ""]
    return "\n".join(out).rstrip() + "\n"


def run(argv) -> None:
    ap = argparse.ArgumentParser(prog="bench report")
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/results.md is stale")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        have = open(TARGET).read() if os.path.exists(TARGET) else ""
        if have != text:
            sys.exit(f"{TARGET} is stale against bench/results/*.json: run ./run bench report")
        return
    os.makedirs(DOCS, exist_ok=True)
    with open(TARGET, "w") as f:
        f.write(text)
    print(f"wrote {TARGET}")
