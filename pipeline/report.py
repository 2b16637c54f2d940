"""The run's record: this run's executions from MLMD, the reports its components wrote beside
their artifacts, collected into the run report, and the report as text (the HTML one is
pipeline/report_html.py)."""

from __future__ import annotations

import json
import os

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from collabfeat import storage
from collabfeat.config import Config, feature_node
from collabfeat.features import FEATURE_NAMES
from trainer.evaluate import in_order

STATES = {0: "unknown", 1: "new", 2: "running", 3: "complete", 4: "failed", 5: "cached", 6: "canceled"}


def executions(metadata_path: str, since_ms: int) -> list[dict]:
    """The executions of the newest pipeline run started after since_ms, oldest first:
    {"component", "state", "started", "ended" (epoch seconds), "outputs": {key: [uri, ...]}}."""
    if not os.path.exists(metadata_path):
        return []
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    runs = [r for r in store.get_contexts_by_type("pipeline_run") if r.create_time_since_epoch >= since_ms]
    if not runs:
        return []
    run = max(runs, key=lambda r: r.create_time_since_epoch)
    nodes = {c.id: c.name.split(".", 1)[-1] for c in store.get_contexts_by_type("node")}
    out = []
    for e in sorted(store.get_executions_by_context(run.id), key=lambda e: e.id):
        component = next((nodes[c.id] for c in store.get_contexts_by_execution(e.id) if c.id in nodes), e.type)
        outputs: dict[str, list[str]] = {}
        events = [ev for ev in store.get_events_by_execution_ids([e.id]) if ev.type == metadata_store_pb2.Event.OUTPUT]
        uris = {a.id: a.uri for a in store.get_artifacts_by_id([ev.artifact_id for ev in events])} if events else {}
        for ev in events:
            outputs.setdefault(ev.path.steps[0].key, []).append(uris[ev.artifact_id])
        out.append(
            {
                "component": component,
                "state": STATES.get(e.last_known_state, str(e.last_known_state)),
                "started": e.create_time_since_epoch / 1000,
                "ended": e.last_update_time_since_epoch / 1000,
                "outputs": outputs,
            }
        )
    return out


def find_artifact(pipeline_root: str, component: str, output: str) -> str | None:
    """The newest artifact directory LocalDagRunner wrote for component.output, if any (tests)."""
    base = os.path.join(pipeline_root, component, output)
    if not os.path.isdir(base):
        return None
    runs = sorted((d for d in os.listdir(base) if d.isdigit()), key=int)
    return os.path.join(base, runs[-1]) if runs else None


def read_report(uri: str | None) -> dict | None:
    """The report.json that a collabfeat component wrote beside an output artifact, if any."""
    if not uri or not storage.exists(os.path.join(uri, "report.json")):
        return None
    return storage.read_json(os.path.join(uri, "report.json"))


OUTPUTS = {
    "images": ("ImageImport", "images"),
    "logs": ("LogTransform", "interactions"),
    "mf": ("MFTrainer", "model"),
    "cnn": ("CNNTrainer", "model"),
    "evaluation": ("Evaluator", "evaluation"),
    "index": ("Indexer", "index"),
    "push": ("Pusher", "pushed_model"),
}


def collect(cfg: Config, ran: list[dict]) -> dict:
    """The run report from the reports of this run's completed components (`ran`: from MLMD,
    executions()), never from an earlier run's artifacts."""
    report: dict = {
        "data": {
            k: getattr(cfg.data, k)
            for k in ("logs", "items", "image_dir", "eval_items", "transfer_items", "unseen_items")
        }
    }
    sheet = os.path.join(os.path.dirname(cfg.data.items), "datasheet.json")
    if os.path.exists(sheet):
        with open(sheet) as f:
            report["datasheet"] = {k: v for k, v in json.load(f).items() if k != "parameters"}
    # a cached component's outputs are an earlier run's, found by TFX's cache for this run
    done = {e["component"]: e["outputs"] for e in ran if e["state"] in ("complete", "cached")}
    for key, (component, output) in OUTPUTS.items():
        found = read_report((done.get(component, {}).get(output) or [None])[0])
        if found is not None:
            report[key] = found
    for component, outputs in done.items():  # the feature sets' trainers (FeatureTrainer)
        if component.startswith(feature_node("")):
            found = read_report((outputs.get("model") or [None])[0])
            if found is not None:
                report.setdefault("features", {})[component[len(feature_node("")) :]] = found
    report["artifacts"] = done  # component -> output -> URIs: the report's charts read from these
    anomalies = (done.get("ExampleValidator", {}).get("anomalies") or [None])[0]
    if anomalies:
        report["anomalies_uri"] = anomalies
    return report


def key_figure(component: str, outputs: dict[str, list[str]]) -> str:
    """What a finished component produced, in a few words from its report ("" if it has none)."""
    if component.startswith(feature_node("")):
        r = read_report((outputs.get("model") or [None])[0])
        if r is None:
            return ""
        if not r["trained"]:
            return f"not trained: {r['why']}"
        if not r["losses"]:
            return "no training"
        return f"{len(r['losses'])} epochs on {r['images']} images, loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}"
    key = next((k for k, (name, _) in OUTPUTS.items() if name == component), None)
    r = read_report((outputs.get(OUTPUTS[key][1]) or [None])[0]) if key else None
    if r is None:
        return ""
    if key == "images":
        return ", ".join(
            f"{split} {o['counts'].get('used', 0)} of {sum(o['counts'].values())} images used" for split, o in r.items()
        )
    if key == "logs":
        return (
            f"{r['rows'].get('used', 0)} of {sum(r['rows'].values())} rows used; {r['users']} users x "
            f"{r['items']} items, {r['pairs']['train']} train pairs"
        )
    if key == "mf":
        rk = next(k for k in r if k.startswith("recall@") and not k.endswith("popularity"))
        return f"{rk} {r[rk]:.3f} (popularity {r[rk + '_popularity']:.3f})"
    if key == "cnn":
        return f"{r['with_factor']} images, loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}"
    if key == "evaluation":
        return f"{r['metric']} {r['table'][r['served']][r['metric']]:.3f} ({r['served']}, served)"
    if key == "index":
        rk = next(k for k in r if k.startswith("recall@"))
        return f"{rk} {r[rk]:.3f} against exact search ({r['settings']['kind']})"
    return f"version {r['version']}" if r.get("pushed") else f"not pushed: {r.get('why', '')}"


def _rows(title, counts):
    total = sum(counts.values())
    lines = [f"{title}: {total} rows"]
    for k, v in sorted(counts.items(), key=lambda kv: (kv[0] != "used", -kv[1])):
        lines.append(f"    {k:<24}{v:>10}")
    return lines


def _count(facet: dict) -> str:
    return f"{facet['images']}, {facet['chance']:.3f}"


def _pair(row: dict, metric: str) -> str:
    return f"{row[metric]:.3f} / {row['mAP']:.3f}"


def _evaluation(e: dict) -> list[str]:
    """The paper's table: retrieval on each facet (columns) by each feature set (rows), and the targets."""
    facets = in_order(
        e.get("facets")
        or {"category": {"table": e["table"], "images": e["images"], "chance": e["chance"], "split": e["split"]}}
    )
    m = e["metric"]
    out = [f"retrieval, {m} / mAP (each image queries the rest of its facet's images):"]
    out.append("    " + f"{'features':<32}" + "".join(f"{f:>20}" for f in facets))
    out.append("    " + f"{'(images, chance ' + m + ')':<32}" + "".join(f"{_count(f):>20}" for f in facets.values()))
    rows = [n for n in FEATURE_NAMES if any(n in f["table"] for f in facets.values())]
    for name in rows:
        cells = "".join(f"{_pair(f['table'][name], m) if name in f['table'] else '-':>20}" for f in facets.values())
        out.append(f"    {FEATURE_NAMES[name]:<32}{cells}{' *served' if name == e['served'] else ''}")
    checks = e.get("targets", [])
    if checks:
        met = sum(c["met"] for c in checks)
        out.append(f"targets (the paper's claims, on {m}): {met} of {len(checks)} met")
        for c in checks:
            values = ", ".join(f"{k} {v:.3f}" for k, v in c["values"])
            needed = f"; needed {c['needed']:.3f}" if "needed" in c else ""
            out.append(f"    {'met   ' if c['met'] else 'MISSED'} {c['target']} ({values}{needed})")
    if len(e.get("candidates", {})) > 1:
        said = ", ".join(f"{FEATURE_NAMES[n]} {v:.3f}" for n, v in e["candidates"].items())
        how = "the best" if e.get("serve", "best") == "best" else f"eval.serve {e['serve']!r}"
        out.append(
            f"served: {FEATURE_NAMES[e['served']]}, {how} of the collaborative features on {m} over "
            f"{e.get('bless_on', 'the facets')} ({said})"
        )
    if "bless_on" in e:
        margins = ", ".join(f"{k} {v:+.3f}" for k, v in e["margins"].items())
        out.append(
            f"blessing ({m} on {e['bless_on']}): {e['served']}'s margins over {margins}, "
            f"eval.bless_margin {e['bless_margin']}: {'blessed' if e['blessed'] else 'NOT blessed'}"
        )
    return out


def format_report(r: dict) -> str:
    out = ["", "=== collabfeat run report ==="]
    if "datasheet" in r:
        s = r["datasheet"]
        out.append(f"data: {s['source']}")
        out.append(
            f"    {s['images']['catalogue']} catalogue + {s['images']['held_out']} held-out images "
            f"({s['images']['resolution']}), {s['rows']} log rows, view density {s['density_views']:.4%}"
        )
        if "styles" in s:
            st, tastes = s["styles"], s.get("tastes", s["styles"])
            out.append(
                f"    styles: {', '.join(map(str, st['styles'].values()))}"
                f"{' (' + st['unseen'] + ' unseen: in no training)' if st.get('unseen') else ''}, crossed "
                f"with {len(s['images']['classes'])} categories; users follow style with weight "
                f"{tastes['style_weight']} and category with {tastes['category_weight']}"
            )
        if s.get("transfer"):
            out.append(
                f"    transfer set: {s['transfer']['images']} clip-art images in "
                f"{len(s['transfer']['categories'])} categories ({s['transfer']['source']})"
            )
    # What a user came for first: the quality table, its targets, and what was pushed.
    if "evaluation" in r:
        out += _evaluation(r["evaluation"])
    if "push" in r:
        p = r["push"]
        out.append(f"pushed: {p['destination']}" if p["pushed"] else f"not pushed: {p['why']}")
        if p["pushed"] and p.get("why"):
            out.append(f"    against what was served: {p['why']}")
    if "images" in r:
        for split, o in r["images"].items():
            out += _rows(f"images/{split}", o["counts"])
    if "logs" in r:
        lg = r["logs"]
        out += _rows("behaviour logs", lg["rows"])
        out.append(
            f"    -> {lg['users']} users x {lg['items']} items, pairs train {lg['pairs']['train']}, "
            f"eval {lg['pairs']['eval']}"
        )
        if "buckets" in lg:
            out.append(
                f"    aggregated in {lg['buckets']} hash buckets of users, about "
                f"{lg['bucket_rows']} log rows each (transform.bucket_rows): one at a time per worker"
            )
        for reason, ex in sorted(lg.get("rejected_examples", {}).items()):
            out.append(f"    e.g. {reason}: {ex[0]}")
    if "mf" in r:
        m = r["mf"]
        rk = next(k for k in m if k.startswith("recall@") and not k.endswith("popularity"))
        out.append(
            f"MF (TFRS): {rk} {m[rk]:.3f} (popularity ranking {m[rk + '_popularity']:.3f}), "
            f"final loss {m['losses'][-1]:.4f}"
        )
        for facet, a in m.get("agreement@10", {}).items():
            out.append(
                f"    item factors' 10 nearest neighbours share the item's {facet}: "
                f"{a['value']:.3f} (chance {a['chance']:.3f})"
            )
    if "cnn" in r:
        c = r["cnn"]
        out.append(
            f"CNN ({c['mode']}): trained on {c['with_factor']} of {c['catalogue_images']} catalogue images, "
            f"loss {c['losses'][0]:.4f} -> {c['losses'][-1]:.4f}"
        )
    if "index" in r:
        ix = r["index"]
        rk = next(k for k in ix if k.startswith("recall@"))
        st = ix["settings"]
        knobs = ", ".join(f"{key} {st[key]}" for key in ("leaves", "leaves_to_search", "reorder") if key in st)
        out.append(
            f"ScaNN index ({st['kind']}{': ' + knobs if knobs else ''}): {ix['items']} items, "
            f"{rk} against exact search {ix[rk]:.3f} on {ix['recall_queries']} queries"
        )
        out.append(f"    chosen because: {st['why']}")
    if r.get("engine", {}).get("name") == "portable":
        out.append(
            f"Beam stages: the portable engine (a local job service and SDK worker processes), "
            f"{r['engine']['jobs']} Beam jobs completed there; log: {r['engine']['log']}"
        )
    if "components" in r:
        out.append("components (wall seconds, peak memory (PSS) of the process tree):")
        for name, c in r["components"].items():
            state = "" if c["state"] == "complete" else f"  {c['state'].upper()}"
            peak = "-" if c["peak_rss_mb"] is None else c["peak_rss_mb"]
            out.append(f"    {name:<22}{c['seconds']:>8.1f} s{peak:>8} MB{state}")
    if "seconds" in r:
        out.append(f"pipeline time: {r['seconds']:.0f} s")
    if "failed" in r:
        f = r["failed"]
        out.append(f"FAILED: {f['component']}: {f['cause']} (log: {f['log']})")
    return "\n".join(out)
