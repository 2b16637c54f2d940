"""The docs' screenshots, from a real run: the explorer over the newest pushed version, in Debian's
Chromium. docs/img/explorer.png: a catalogue item queried under the served features, then the same
query under raw pixels, as two rows.

Usage: ./run shell -c "python docs/screenshots.py [--model-base-path runs/models/collabfeat]"
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-base-path", default="runs/models/collabfeat")
    ap.add_argument("--item", type=int, default=5, help="which thumbnail of the first page to query")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright  # lazy: the browser, only for screenshots

    proc = subprocess.Popen(
        [sys.executable, "-m", "collabfeat", "explore", "--model-base-path", args.model_base_path, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        if "explorer on" not in line:
            sys.exit(f"the explorer did not start: {line}")
        url = line.split()[3]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            page.locator("#grid img.thumb").nth(args.item).click()
            page.wait_for_selector(".row .strip img")
            page.select_option("#set", "pixels")
            page.wait_for_function("document.querySelectorAll('.row').length >= 2")
            page.wait_for_function("[...document.querySelectorAll('img')].every(i => i.complete)")
            os.makedirs(os.path.join(HERE, "img"), exist_ok=True)
            page.screenshot(path=os.path.join(HERE, "img", "explorer.png"))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(20)
    print(os.path.join(HERE, "img", "explorer.png"))


if __name__ == "__main__":
    main()
