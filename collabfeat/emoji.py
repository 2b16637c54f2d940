"""The default catalogue's images: the same emoji drawn by several vendors.

env/emoji.sh unpacks four npm packages into the environment (share/collabfeat-data/emoji) and
renders the SVG vendors at 64 px, the resolution the PNG vendors ship:

  google    emoji-datasource-google 16.0.0 (Noto Emoji, Apache-2.0)   64-px PNGs
  twitter   emoji-datasource-twitter 16.0.0 (Twemoji, CC-BY-4.0)      64-px PNGs
  openmoji  openmoji 17.0.0 (CC-BY-SA-4.0)                            SVG, rendered
  fluent    fluentui-emoji 1.3.0 (Microsoft Fluent Emoji "modern", MIT)  SVG, rendered

An emoji is one identity (its code points, Unicode's name, category and subcategory from
emoji-datasource's emoji.json); each vendor's drawing of it is one image. Style = vendor,
category = the emoji's category: the two are crossed exactly, every emoji kept is drawn by every
vendor. Skin-tone variants (emoji.json nests them) and the Flags and Component categories are
left out.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from dataclasses import dataclass

VENDORS = ("google", "twitter", "openmoji", "fluent")
LICENCES = {
    "google": "Noto Emoji via emoji-datasource-google 16.0.0, Apache-2.0",
    "twitter": "Twemoji via emoji-datasource-twitter 16.0.0, CC-BY-4.0",
    "openmoji": "OpenMoji 17.0.0, CC-BY-SA-4.0",
    "fluent": "Fluent Emoji (modern) via fluentui-emoji 1.3.0, MIT",
}
EXCLUDED_CATEGORIES = ("Flags", "Component")
DATA_DIR = os.environ.get("COLLABFEAT_EMOJI_DIR") or os.path.join(sys.prefix, "share", "collabfeat-data", "emoji")


@dataclass(frozen=True)
class Emoji:
    code: str  # emoji.json's "unified", e.g. 1F600
    name: str
    category: str
    subcategory: str
    images: dict[str, str]  # vendor -> image path, relative to the data directory


def _slug(text: str) -> str:
    """A CLDR short name as fluentui-emoji names its files: 'grinning face' -> 'grinning-face'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("\u2019", "").replace("'", "")).strip("-")


def load(directory: str = "") -> list[Emoji]:
    """Every emoji that all of VENDORS draw, in emoji.json's order."""
    root = directory or DATA_DIR
    meta = os.path.join(root, "google", "package", "emoji.json")
    if not os.path.exists(meta):
        raise FileNotFoundError(
            f"{meta} not found: env/emoji.sh unpacks the emoji packages into the environment "
            "(set COLLABFEAT_EMOJI_DIR to use another copy), or set data.source=fashion"
        )
    with open(meta) as f:
        entries = json.load(f)
    with open(os.path.join(root, "openmoji", "package", "data", "openmoji.csv"), newline="") as f:
        cldr = {r["hexcode"]: r["annotation"] for r in csv.DictReader(f) if not r["skintone"]}
    fluent_dir = os.path.join("fluent", "package", "icons", "modern", "png")
    fluent = set(os.listdir(os.path.join(root, fluent_dir)))
    openmoji_dir = os.path.join("openmoji", "package", "color", "svg", "png")
    openmoji = set(os.listdir(os.path.join(root, openmoji_dir)))
    out = []
    for e in entries:
        if e["category"] in EXCLUDED_CATEGORIES or not (e.get("has_img_google") and e.get("has_img_twitter")):
            continue
        code = next((c for c in (e["unified"], e.get("non_qualified")) if c and c in cldr), None)
        if code is None or f"{code}.svg.png" not in openmoji:
            continue
        slug = _slug(cldr[code])
        fl = next((f for f in (f"{slug}.svg.png", f"{slug}-default.svg.png") if f in fluent), None)
        if fl is None:
            continue
        out.append(
            Emoji(
                e["unified"],
                e["name"] or cldr[code],
                e["category"],
                e["subcategory"],
                {
                    "google": os.path.join("google", "package", "img", "google", "64", e["image"]),
                    "twitter": os.path.join("twitter", "package", "img", "twitter", "64", e["image"]),
                    "openmoji": os.path.join(openmoji_dir, f"{code}.svg.png"),
                    "fluent": os.path.join(fluent_dir, fl),
                },
            )
        )
    return out


def categories(emoji: list[Emoji]) -> list[str]:
    """The categories present, sorted: a category's label is its index here."""
    return sorted({e.category for e in emoji})
