"""The run report as one self-contained HTML page (runs/<name>/report.html): the text report, and
plotly charts of what the run did. plotly.js comes from the pinned Python package, inline: the page
needs no server and no network.

Charts (each only when its component ran): the components' seconds and peak memory; rows and
images dropped, by reason, with examples; the logs' feature statistics from StatisticsGen (numeric
histograms, most frequent values); MF's loss by sweep and its recall against popularity; the CNN's
loss by epoch; the retrieval table; and, for a few fixed catalogue items, the similarity of their
50 nearest neighbours against rank under every feature set the Indexer wrote.
"""

from __future__ import annotations

import base64
import glob
import html
import itertools
import json
import os

import numpy as np

from collabfeat import storage, topk
from collabfeat.features import FEATURE_NAMES
from trainer.evaluate import in_order

QUERIES = 3  # fixed catalogue items (a seeded sample) whose similarity-against-rank is drawn
RANKS = 50


def _uri(report: dict, component: str, output: str) -> str | None:
    return ((report.get("artifacts", {}).get(component) or {}).get(output) or [None])[0]


def _figures(report: dict) -> list[tuple]:
    import plotly.graph_objects as go  # lazy: plotly, only to draw
    from plotly.subplots import make_subplots  # lazy: plotly, only to draw

    figs = []
    comps = report.get("components", {})
    if comps:
        names = list(comps)
        fig = make_subplots(rows=1, cols=2, subplot_titles=("wall seconds", "peak memory of the process tree (MB)"))
        fig.add_trace(go.Bar(x=names, y=[comps[n]["seconds"] for n in names], name="seconds"), 1, 1)
        fig.add_trace(go.Bar(x=names, y=[comps[n]["peak_rss_mb"] for n in names], name="peak MB"), 1, 2)
        figs.append(("Components", fig, ""))
    dropped = []
    if "logs" in report:
        dropped.append(("behaviour log rows", report["logs"]["rows"], report["logs"].get("rejected_examples", {})))
    for split, o in report.get("images", {}).items():
        dropped.append((f"images/{split}", o["counts"], o.get("examples", {})))
    if dropped:
        fig = make_subplots(rows=1, cols=len(dropped), subplot_titles=[t for t, _, _ in dropped])
        for col, (title, counts, _) in enumerate(dropped, 1):
            reasons = sorted(counts, key=lambda k: (k != "used", -counts[k]))
            fig.add_trace(go.Bar(x=reasons, y=[counts[r] for r in reasons], name=title), 1, col)
            fig.update_yaxes(type="log", row=1, col=col)
        examples = "".join(
            f"<h4>{html.escape(t)}</h4><ul>"
            + "".join(
                f"<li><b>{html.escape(r)}</b>: {html.escape(str(ex[0]))}</li>" for r, ex in sorted(e.items()) if ex
            )
            + "</ul>"
            for t, _, e in dropped
            if e
        )
        figs.append(("Rows and images used, and dropped by reason", fig, examples))
    stats = _statistics(report)
    if stats is not None:
        figs.append(("Behaviour logs: feature statistics (StatisticsGen)", stats, ""))
    if "mf" in report:
        m = report["mf"]
        rk = next(k for k in m if k.startswith("recall@") and not k.endswith("popularity"))
        fig = make_subplots(rows=1, cols=2, subplot_titles=("MF loss by sweep / epoch", f"held-out {rk}"))
        fig.add_trace(
            go.Scatter(y=m["losses"], x=list(range(1, len(m["losses"]) + 1)), mode="lines+markers", name="MF loss"),
            1,
            1,
        )
        fig.add_trace(go.Bar(x=["MF factors", "popularity"], y=[m[rk], m[rk + "_popularity"]], name=rk), 1, 2)
        figs.append(("Matrix factorisation", fig, ""))
    if "cnn" in report:
        c = report["cnn"]
        fig = go.Figure(
            go.Scatter(y=c["losses"], x=list(range(1, len(c["losses"]) + 1)), mode="lines+markers", name="CNN loss")
        )
        fig.update_layout(xaxis_title="epoch", yaxis_title=f"{c['mode']} loss")
        figs.append(("CNN training", fig, ""))
    if "evaluation" in report:
        e = report["evaluation"]
        facets = in_order(e.get("facets") or {"category": {"table": e["table"], "chance": e["chance"]}})
        fig = make_subplots(rows=1, cols=len(facets), subplot_titles=[f"{f}: {e['metric']}" for f in facets])
        for col, (facet, f) in enumerate(facets.items(), 1):
            names = list(f["table"])
            fig.add_trace(
                go.Bar(
                    x=names,
                    y=[f["table"][n][e["metric"]] for n in names],
                    name=facet,
                    marker_color=["crimson" if n == e["served"] else "steelblue" for n in names],
                    showlegend=False,
                ),
                1,
                col,
            )
            fig.add_hline(y=f["chance"], line_dash="dot", annotation_text="chance", row=1, col=col)
        met = sum(c["met"] for c in e.get("targets", []))
        figs.append(
            (
                f"Retrieval on each facet (served: {e['served']}, in red)",
                fig,
                f"Targets met: {met} of {len(e.get('targets', []))}: "
                + "; ".join(f"{'met' if c['met'] else 'MISSED'}: {c['target']}" for c in e.get("targets", [])),
            )
        )
    curves = _similarity_curves(report)
    if curves is not None:
        figs.append(
            (
                "Similarity against rank, for fixed catalogue items",
                curves,
                "A steep fall means a feature set separates an item's nearest neighbours from the rest.",
            )
        )
    for _, fig, _ in figs:
        fig.update_layout(height=420, margin={"t": 50, "b": 40}, template="plotly_white")
    return figs


def _statistics(report: dict):
    """StatisticsGen's statistics of the logs as charts: histograms of numeric features, the most
    frequent values of string features."""
    uri = _uri(report, "StatisticsGen", "statistics")
    paths = storage.glob(os.path.join(uri, "Split-*", "FeatureStats.pb")) if uri else []
    if not paths:
        return None
    import plotly.graph_objects as go  # lazy: plotly, only to draw
    from plotly.subplots import make_subplots  # lazy: plotly, only to draw
    from tensorflow_metadata.proto.v0 import statistics_pb2  # lazy: TensorFlow's start-up, only for the statistics

    stats = statistics_pb2.DatasetFeatureStatisticsList()
    with storage.open(paths[0], "rb") as f:
        stats.ParseFromString(f.read())
    dataset = stats.datasets[0]
    feats = list(dataset.features)
    fig = make_subplots(
        rows=1, cols=len(feats), subplot_titles=[f"{f.path.step[0] if f.path.step else f.name}" for f in feats]
    )
    for col, f in enumerate(feats, 1):
        if f.HasField("num_stats"):
            h = next((h for h in f.num_stats.histograms if h.type == h.STANDARD), None)
            if h is not None:
                fig.add_trace(
                    go.Bar(
                        x=[(b.low_value + b.high_value) / 2 for b in h.buckets],
                        y=[b.sample_count for b in h.buckets],
                        name="count",
                    ),
                    1,
                    col,
                )
            missing = f.num_stats.common_stats.num_missing
        else:
            top = f.string_stats.top_values[:10]
            fig.add_trace(go.Bar(x=[t.value for t in top], y=[t.frequency for t in top], name="count"), 1, col)
            missing = f.string_stats.common_stats.num_missing
        fig.layout.annotations[col - 1].text += f" ({missing} missing)"
    fig.update_layout(showlegend=False, title=f"{dataset.num_examples} rows")
    return fig


def _similarity_curves(report: dict):
    uri = _uri(report, "Indexer", "index")
    if not uri or not storage.exists(os.path.join(uri, "embeddings.npy")):
        return None
    with storage.local_copy(uri) as local:  # memory-mapped below: local files
        return _curves(report, local)


def _curves(report: dict, uri: str):
    import plotly.graph_objects as go  # lazy: plotly, only to draw
    from plotly.colors import qualitative  # lazy: plotly, only to draw
    from plotly.subplots import make_subplots  # lazy: plotly, only to draw

    served = np.load(os.path.join(uri, "embeddings.npy"), mmap_mode="r")
    with open(os.path.join(uri, "index.json")) as f:
        name = json.load(f).get("served", "served")
    sets = {f"{name} (served)": served}
    for path in sorted(glob.glob(os.path.join(uri, "features", "*", "embeddings.npy"))):
        sets[os.path.basename(os.path.dirname(path))] = np.load(path, mmap_mode="r")
    rows = topk.sample(len(served), QUERIES, 0)
    with open(os.path.join(uri, "item_ids.txt")) as f:
        ids = [line.strip() for line in f if line.strip()]
    fig = make_subplots(rows=1, cols=len(rows), subplot_titles=[f"item {ids[r]}" for r in rows])
    for (name, emb), colour in zip(sets.items(), itertools.cycle(qualitative.D3)):
        _, scores = topk.top_k(np.asarray(emb[rows], np.float32), emb, RANKS + 1)
        for col, s in enumerate(scores, 1):
            fig.add_trace(
                go.Scatter(
                    x=list(range(1, RANKS + 1)),
                    y=s[1:].tolist(),
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    mode="lines",
                    line={"color": colour},
                ),
                1,
                col,
            )
        fig.update_xaxes(title_text="rank")
    fig.update_yaxes(title_text="cosine similarity", col=1)
    return fig


def _needed(check: dict) -> str:
    return f"; needed {check['needed']:.3f}" if "needed" in check else ""


def _quality(report: dict) -> str:
    """The quality table (facets as columns, feature sets as rows, a chance line) and its targets."""
    e = report.get("evaluation")
    if not e or "facets" not in e:
        return ""
    m, facets = e["metric"], in_order(e["facets"])
    rows = [n for n in FEATURE_NAMES if any(n in f["table"] for f in facets.values())]
    head = "".join(
        f"<th>{html.escape(name)}<br><small>{f['images']} images, {f.get('queries', f['images'])} queries</small></th>"
        for name, f in facets.items()
    )
    body = "<tr><td><i>chance</i></td>" + "".join(f"<td><i>{f['chance']:.3f}</i></td>" for f in facets.values())
    for n in rows:
        best = {facet: max(f["table"].values(), key=lambda r: r[m])[m] for facet, f in facets.items()}
        cells = "".join(
            (
                f"<td{' class=best' if f['table'][n][m] == best[facet] else ''}>{f['table'][n][m]:.3f} "
                f"<small>/ {f['table'][n]['mAP']:.3f}</small></td>"
            )
            if n in f["table"]
            else "<td>-</td>"
            for facet, f in facets.items()
        )
        served = " <b>(served)</b>" if n == e["served"] else ""
        body += f"<tr><td>{html.escape(FEATURE_NAMES[n])}{served}</td>{cells}</tr>"
    checks = e.get("targets", [])
    items = "".join(
        f"<li class={'met' if c['met'] else 'missed'}>{'met' if c['met'] else 'MISSED'}: {html.escape(c['target'])} "
        f"({', '.join(f'{k} {v:.3f}' for k, v in c['values'])}{_needed(c)})"
        f"</li>"
        for c in checks
    )
    chosen = ""
    if len(e.get("candidates", {})) > 1:
        said = ", ".join(f"{html.escape(FEATURE_NAMES[n])} {v:.3f}" for n, v in e["candidates"].items())
        how = "the best" if e.get("serve", "best") == "best" else f"eval.serve {html.escape(repr(e['serve']))}"
        chosen = (
            f"<p>Served: <b>{html.escape(FEATURE_NAMES[e['served']])}</b>, {how} of the collaborative features "
            f"on {m} over {html.escape(e.get('bless_on', 'the facets'))} ({said}).</p>"
        )
    return (
        f"<section><h2>Quality: {m} / mAP on each facet</h2><table class=quality><tr><th>features</th>{head}"
        f"</tr>{body}</table>{chosen}<h3>Targets: {sum(c['met'] for c in checks)} of {len(checks)} met</h3>"
        f"<ul>{items}</ul></section>"
    )


def _gallery(report: dict) -> str:
    """For a few fixed queries per facet, the images each feature set retrieves, side by side
    (green: same value of the facet as the query, red: not), from the Evaluator's gallery."""
    e, uri = report.get("evaluation") or {}, _uri(report, "ImageImport", "images")
    gallery = e.get("gallery")
    if not gallery or not uri:
        return ""

    import tensorflow as tf  # lazy: TensorFlow's start-up (seconds), only on this path

    from collabfeat import examples  # lazy: collabfeat.examples imports TensorFlow, which the report's process need not

    wanted: dict[str, set] = {}
    for g in gallery.values():
        for sp, item in g["queries"]:
            wanted.setdefault(sp, set()).add(item)
        for name, lists in g.items():
            if name != "queries":
                for hits in lists:
                    for sp, item, _ in hits:
                        wanted.setdefault(sp, set()).add(item)
    png = {}
    for sp, items in wanted.items():
        for b in examples.batches(uri, sp, {"item_id": tf.string, "image": tf.string}, 4096):
            for i, data in zip(b["item_id"], b["image"]):
                if i.decode() in items:
                    png[sp, i.decode()] = base64.b64encode(data).decode()

    def img(sp, item, cls=""):
        data = png.get((sp, item))
        return (
            f"<img class='{cls}' title='{html.escape(item)}' src='data:image/png;base64,{data}'>"
            if data
            else f"<span>{html.escape(item)}</span>"
        )

    out = [
        "<section><h2>What each feature set retrieves</h2><p>For fixed held-out queries (the same "
        "for every feature set), the nearest images: green shares the query's value of the facet, red does "
        "not.</p>"
    ]
    for facet, g in in_order(gallery).items():
        out.append(f"<h3>{html.escape(facet)}</h3>")
        for q, (sp, item) in enumerate(g["queries"]):
            out.append(f"<div class=query>{img(sp, item, 'q')}<table>")
            for name in FEATURE_NAMES:
                if name in g:
                    hits = "".join(img(s2, i2, "hit" if rel else "miss") for s2, i2, rel in g[name][q])
                    out.append(f"<tr><td>{html.escape(FEATURE_NAMES[name])}</td><td>{hits}</td></tr>")
            out.append("</table></div>")
    out.append("</section>")
    return "".join(out)


def _sweep(path: str):
    """The taste-weight sweep (bench/results/sweep.json, `./run bench sweep`), if it has been run."""
    if not os.path.exists(path):
        return None

    import plotly.graph_objects as go  # lazy: plotly, only to draw
    from plotly.subplots import make_subplots  # lazy: plotly, only to draw

    with open(path) as f:
        sweep = json.load(f)
    cells = sweep["cells"]
    styles = sorted({c["style_weight"] for c in cells})
    cats = sorted({c["category_weight"] for c in cells})
    facets = ("style", "unseen_style", "category")
    fig = make_subplots(rows=1, cols=3, subplot_titles=facets)
    grids = {}
    for facet in facets:
        best = max(sweep["baselines"][b][facet] for b in ("random", "pixels"))
        grids[facet] = [
            [
                next(
                    (
                        c[f"collaborative {facet}"] - best
                        for c in cells
                        if c["style_weight"] == s and c["category_weight"] == w
                    ),
                    None,
                )
                for s in styles
            ]
            for w in cats
        ]
    top = max(abs(v) for z in grids.values() for row in z for v in row if v is not None) or 1.0
    for col, facet in enumerate(facets, 1):  # one colour scale for all three
        fig.add_trace(
            go.Heatmap(
                z=grids[facet],
                x=[str(s) for s in styles],
                y=[str(w) for w in cats],
                zmin=-top,
                zmax=top,
                colorscale="RdBu",
                showscale=col == 3,
                texttemplate="%{z:.3f}",
            ),
            1,
            col,
        )
        fig.update_xaxes(title_text="style weight", row=1, col=col)
    fig.update_yaxes(title_text="category weight", col=1)
    return fig


SWEEP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "results", "sweep.json")


def write(report: dict, text: str, path: str) -> str:
    """The report (and its text form) -> a self-contained HTML file at `path`: the quality table
    and its targets first, then the gallery, the sweep, the charts of what the run did, the text."""
    from plotly.offline import get_plotlyjs  # lazy: plotly, only to draw

    parts = [_quality(report), _gallery(report)]
    sweep = _sweep(SWEEP)
    if sweep is not None:
        sweep.update_layout(height=380, margin={"t": 50, "b": 40}, template="plotly_white")
        parts.append(
            "<section><h2>Where collaborative features win: the simulator's taste weights "
            "(bench/results/sweep.json)</h2><p>Collaborative precision@10 minus the better of random-init "
            "and raw pixels, on each facet, for each pair of taste weights (blue: collaborative ahead).</p>"
            + sweep.to_html(full_html=False, include_plotlyjs=False)
            + "</section>"
        )
    for title, fig, note in _figures(report):
        parts.append(
            f"<section><h2>{html.escape(title)}</h2>"
            + fig.to_html(full_html=False, include_plotlyjs=False)
            + (f"<div>{note}</div>" if note else "")
            + "</section>"
        )
    failed = report.get("failed")
    banner = (
        f"<p class='failed'>{html.escape(failed['component'])} failed: {html.escape(failed['cause'])}</p>"
        if failed
        else ""
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>collabfeat run report</title>
<script>{get_plotlyjs()}</script>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}} pre{{background:#f6f6f6;padding:1em;overflow:auto}}
.failed{{color:#b00;font-weight:bold}} section{{margin-top:2em}}
table.quality td,table.quality th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}}
table.quality td:first-child{{text-align:left}} td.best{{font-weight:bold}} li.met{{color:#070}} li.missed{{color:#b00}}
.query{{display:flex;gap:1em;align-items:flex-start;margin:.5em 0}} .query img{{width:40px;height:40px;margin:1px}}
img.q{{width:64px!important;height:64px!important;border:3px solid #333}} img.hit{{border:2px solid #2a2}}
img.miss{{border:2px solid #d33}}</style></head>
<body><h1>collabfeat run report</h1>{banner}
{''.join(parts)}
<section><h2>Text report</h2><pre>{html.escape(text)}</pre></section>
</body></html>"""
    with open(path, "w") as f:
        f.write(page)
    return path
