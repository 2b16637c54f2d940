"""The explorer page in a real headless Chromium (Debian's), driven by Playwright, against the
real explorer server over a real pushed version. Screenshots land under pytest's temporary directory."""

import http.client
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tests.serving_fixtures import catalogue, push_version

CHROMIUM = "/usr/bin/chromium"


REPORT = "<!doctype html><title>collabfeat run report</title><p>the run that pushed this version</p>"


def explorer_version(tmp, n=300, map_sample=20000, report=True):
    """A pushed version over n catalogue photos whose run config names an item table with their images
    (what the thumbnails come from): (version path, ids, labels)."""
    version = push_version(str(tmp / "models"), n=n, map_sample=map_sample)
    if report:  # what the supervisor copies into the version it pushed (pipeline/supervise.write_html)
        with open(os.path.join(version, "assets.extra", "report.html"), "w") as f:
            f.write(REPORT)
    ids, blobs, labels = catalogue(n)
    (tmp / "img").mkdir()
    with open(tmp / "items.csv", "w") as f:
        f.write("item_id,image,label,style\n")
        for j, (i, b, label) in enumerate(zip(ids, blobs, labels)):
            (tmp / "img" / f"{i}.png").write_bytes(b)
            f.write(f"{i},{i}.png,{label},{j % 3}\n")  # a second facet: style j mod 3
    cfg_path = os.path.join(version, "assets.extra", "config.json")
    cfg = json.load(open(cfg_path))
    cfg["data"].update(items=str(tmp / "items.csv"), image_dir=str(tmp / "img"))
    json.dump(cfg, open(cfg_path, "w"))
    return version, ids, labels


def start_explorer(tmp, n=300, map_sample=20000, report=True):
    version, ids, labels = explorer_version(tmp, n, map_sample, report)
    proc = subprocess.Popen(
        [sys.executable, "-m", "collabfeat", "explore", "--model-base-path", os.path.dirname(version), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert "explorer on" in line, line
    return proc, {"url": line.split()[3], "ids": ids, "labels": labels, "tmp": tmp}


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    proc, info = start_explorer(tmp_path_factory.mktemp("explorer"))
    yield info
    proc.terminate()
    proc.wait(20)


def open_page(pw, url, width, height):
    """Debian's Chromium on the explorer's page, once it says it is ready: (browser, page, page errors)."""
    browser = pw.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
        ],
    )
    page = browser.new_page(viewport={"width": width, "height": height})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")
    return browser, page, errors


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def status_of(url, data=None):
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, method="POST" if data else "GET"), timeout=30
        ) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_image_serving_is_safe(explorer):
    u = explorer["url"]
    code, ctype, body = get(f"{u}img/t00003?size=40")
    assert code == 200 and ctype == "image/png" and Image.open(io.BytesIO(body)).size == (40, 40)
    assert Image.open(io.BytesIO(get(f"{u}img/t00003?size=100000")[2])).size == (256, 256)  # bounded
    for bad in (
        "img/..%2F..%2F..%2Fetc%2Fpasswd",
        "img/../../etc/passwd",
        "img/%2Fetc%2Fpasswd",
        "img/nope",
        "static/..%2Fexplorer.py",
        "static/explorer.py",
        "../serving/explorer.py",
        "img/t00003/extra",
    ):
        assert status_of(u + bad) == 404, bad
    assert status_of(f"{u}api/upload", data=b"not an image") == 400
    # An oversized upload is refused from its declared length, before its body is read.
    host, port = u.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/api/upload")
    conn.putheader("Content-Length", str(11 << 20))
    conn.endheaders()
    conn.send(b"0" * 1024)
    assert conn.getresponse().status == 413
    conn.close()
    assert status_of(f"{u}api/query?set=nope&key=t00001") == 404


def test_the_version_links_to_the_report_of_the_run_that_pushed_it(explorer):
    u = explorer["url"]
    assert json.loads(get(f"{u}api/info")[2])["has_report"] is True
    code, ctype, body = get(f"{u}report")
    assert code == 200 and ctype.startswith("text/html") and body.decode() == REPORT


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Where the browser tests' screenshots go (under pytest's temporary directory, never the checkout)."""
    return str(tmp_path_factory.mktemp("screenshots"))


def test_an_upload_under_a_reduced_set_is_projected_as_the_catalogue_was(explorer):
    """The pixels set is stored in 32 of its 2,352 dims (projection.npy): a catalogue image uploaded
    under it is embedded, projected the same way, and finds itself first at similarity 1."""
    u = explorer["url"]
    c = json.loads(get(f"{u}api/query?set=pixels&source=item&key={explorer['ids'][0]}")[2])
    assert len(c["neighbours"]) > 0
    png = (explorer["tmp"] / "img" / f"{explorer['ids'][7]}.png").read_bytes()
    req = urllib.request.Request(f"{u}api/upload?set=pixels", data=png, method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        got = json.loads(r.read())
    best = got["neighbours"][0]
    assert best["id"] == explorer["ids"][7] and best["score"] == pytest.approx(1.0, abs=1e-3)


def test_browse_query_brush_upload_compare_and_switch(explorer, shots):
    from playwright.sync_api import sync_playwright

    u = explorer["url"]
    with sync_playwright() as pw:
        browser, page, errors = open_page(pw, u, 1500, 1100)
        thumbs = page.locator("#grid img.thumb")
        assert thumbs.count() == 48  # one page, not the catalogue
        assert page.locator("#report").is_visible() and page.locator("#report").get_attribute("href") == "/report"
        page.wait_for_function(
            "[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        page.screenshot(path=os.path.join(shots, "1-browse.png"))

        # Click a thumbnail: a row with the server's neighbours and a curve.
        first = thumbs.nth(5).get_attribute("data-id")
        thumbs.nth(5).click()
        page.wait_for_selector(".row .strip img")
        api = json.loads(get(f"{u}api/query?set=regression&source=item&key={first}")[2])
        strip = page.locator(".row").first.locator(".strip img")
        assert [strip.nth(i).get_attribute("data-id") for i in range(12)] == [n["id"] for n in api["neighbours"][:12]]
        assert page.locator(".row .curve .scatterlayer .trace").count() >= 1
        page.screenshot(path=os.path.join(shots, "2-query.png"))

        # Brush: move the ranking window; the strip shows ranks 21..32.
        page.evaluate("""() => { const q = window.explorerState.queries[0];
                                 Plotly.relayout(q.curve, {'xaxis.range': [21, 60]}); }""")
        page.wait_for_function("window.explorerState.queries[0].start === 20")
        assert strip.nth(0).get_attribute("data-id") == api["neighbours"][20]["id"]
        page.screenshot(path=os.path.join(shots, "3-brush.png"))

        # Click a retrieved image: it becomes the next query.
        second = strip.nth(1).get_attribute("data-id")
        strip.nth(1).click()
        page.wait_for_function("window.explorerState.queries.length === 2")
        assert page.evaluate("window.explorerState.queries[1].spec.key") == second

        # Upload a new image (cold start).
        png = explorer["tmp"] / "upload.png"
        x, _ = __import__("collabfeat.images", fromlist=["fashion_mnist"]).fashion_mnist("train")
        Image.fromarray(x[0]).resize((90, 90)).convert("RGB").save(png)
        page.set_input_files("#upload", str(png))
        page.wait_for_function("window.explorerState.queries.length === 3")
        assert page.evaluate("window.explorerState.queries[2].spec.source") == "upload"
        page.screenshot(path=os.path.join(shots, "4-upload.png"))

        # Compare: the summary overlays the three curves; hovering a thumbnail marks it on each.
        curves = "document.getElementById('summary').data.filter(t => t.mode === 'lines').length"
        assert page.evaluate(curves) == 3
        hovered = page.locator("#grid img.thumb").nth(0)
        hovered_id = hovered.get_attribute("data-id")
        hovered.hover()
        page.wait_for_function(f"window.explorerState.marked && window.explorerState.marked.id === '{hovered_id}'")
        marked = page.evaluate("window.explorerState.marked")
        for q, pos in zip(page.evaluate("window.explorerState.queries.map(q => q.spec)"), marked["positions"]):
            check = json.loads(
                get(f"{u}api/position?item={marked['id']}&set={q['set']}&source={q['source']}&key={q['key']}")[2]
            )
            assert check == pos
        assert page.evaluate(curves) == 3
        marks = page.evaluate("document.getElementById('summary').data.filter(t => t.mode !== 'lines')")
        assert len(marks) == 1 and marks[0]["x"] == [p["rank"] for p in marked["positions"]]
        page.screenshot(path=os.path.join(shots, "5-compare.png"))

        # Switch the features: the newest query runs again with them, as a row to compare.
        page.select_option("#set", "pixels")
        page.wait_for_function("window.explorerState.queries.length === 4")
        assert page.evaluate("window.explorerState.queries[3].spec.set") == "pixels"
        page.screenshot(path=os.path.join(shots, "6-switch.png"))

        # The map.
        page.click("#tab-map")
        page.wait_for_selector("#map .scatterlayer, #map canvas")
        assert page.locator("#map").is_visible() and not page.locator("#grid").is_visible()
        page.screenshot(path=os.path.join(shots, "7-map.png"))
        # Colour the map by each facet: the points' colours are that facet's values, item by item.
        assert page.eval_on_selector_all("#facet option", "os => os.map(o => o.value)") == ["category", "style"]
        expect = {i: (int(label), j % 3) for j, (i, label) in enumerate(zip(explorer["ids"], explorer["labels"]))}
        ids = page.evaluate("document.getElementById('map').data[1].text")
        colours = page.evaluate("document.getElementById('map').data[1].marker.color")
        assert colours == [expect[i][0] for i in ids]
        page.select_option("#facet", "style")
        page.wait_for_function("window.explorerState.colourBy === 'style'")
        colours = page.evaluate("document.getElementById('map').data[1].marker.color")
        assert colours == [expect[i][1] for i in ids]
        browser.close()
        assert errors == []


def test_a_large_catalogue_stays_light_in_the_browser(tmp_path, shots):
    """24,000 items: the map sends a bounded sample of points over a density layer of all of them,
    the grid pages are one page each (also far into the catalogue), and both draw in a real browser."""
    from playwright.sync_api import sync_playwright

    from serving.explorer import MAP_POINTS

    n = 24000
    proc, info = start_explorer(tmp_path, n=n, map_sample=3000, report=False)
    try:
        u = info["url"]
        assert status_of(f"{u}report") == 404 and json.loads(get(f"{u}api/info")[2])["has_report"] is False
        code, _, body = get(f"{u}api/map")
        m = json.loads(body)
        assert m["total"] == n and len(m["ids"]) == len(m["x"]) == MAP_POINTS < n
        assert len(set(m["ids"])) == MAP_POINTS and set(m["ids"]) <= set(info["ids"])
        assert sum(map(sum, m["density"]["z"])) == n  # every item in the density
        assert len(body) < 1_000_000
        last = json.loads(get(f"{u}api/items?page=499&size=48")[2])
        assert last["pages"] == 500 and len(last["items"]) == 48
        with sync_playwright() as pw:
            browser, page, errors = open_page(pw, u, 1300, 900)
            assert page.locator("#grid img.thumb").count() == 48
            page.wait_for_function(
                "[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            page.click("#tab-map")
            page.wait_for_selector("#map .heatmaplayer image, #map canvas")
            page.wait_for_function(
                "document.getElementById('map').data && document.getElementById('map').data.length === 2"
            )
            assert page.evaluate("document.getElementById('map').data[1].x.length") == MAP_POINTS
            page.screenshot(path=os.path.join(shots, "8-map-24k.png"))
            browser.close()
        assert errors == []
    finally:
        proc.terminate()
        proc.wait(20)


def test_the_best_rows_are_those_a_stable_sort_of_the_whole_catalogue_gives():
    from serving.explorer import _best

    rng = np.random.default_rng(0)
    for n in (1, 7, 1000):
        for sims in (rng.normal(size=n).astype(np.float32), np.round(rng.normal(size=n), 1).astype(np.float32)):
            for k in (1, 5, 13):
                assert np.array_equal(_best(sims, k), np.argsort(-sims, kind="stable")[:k]), (n, k)


def test_the_explorer_benchmark_grows_a_version_and_times_every_page(tmp_path):
    """bench explorer at a small size: a 300-item version grown to 1,000 items (copies named after their
    source, showing its image), a set too large for --max-set-gb left out with its size, and every page
    kind answered by the real explorer and timed."""
    from bench import explorer as bench_explorer
    from collabfeat import config as config_lib

    version, ids, _ = explorer_version(tmp_path, n=300, report=False)
    work = str(tmp_path / "grown")
    cfg = config_lib.Config()
    dim = np.load(os.path.join(version, "assets.extra", "features", "pixels", "embeddings.npy"), mmap_mode="r").shape[1]
    pixels_gb = 1000 * dim * 4 / 2**30  # the fixture's pixels set at 1,000 items
    info = bench_explorer.make_version(version, 1000, work, max_set_gb=pixels_gb / 2, cfg=cfg)
    assert len(info["ids"]) == 1000 and info["ids"][:300] == ids and info["ids"][300] == f"{ids[0]}~1"
    assert set(info["left out"]) == {"pixels"} and "random" in info["feature sets"]
    grown = os.path.join(work, "models", "collabfeat", "1", "assets.extra")
    assert np.load(os.path.join(grown, "features", "random", "embeddings.npy"), mmap_mode="r").shape[0] == 1000
    measured = bench_explorer.measure(work, info, requests=2)
    kinds = {r["page"] for r in measured["pages"]}
    assert {"info", "map", "thumbnail", "query: random", "position: random"} <= kinds
    assert all(r["median ms"] > 0 for r in measured["pages"]) and measured["peak rss mb"] > 0
