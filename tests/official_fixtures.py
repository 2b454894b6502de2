"""Small official-format files written by hand for the reader tests (values worked out below).

Kept independent of luab_data.sample on purpose: a serialiser shared by the generator and the
tests could hide a bug that both sides agree on.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

T0 = 1_600_000_000_000  # epoch ms


def trace_xml(samples: list[tuple[int, float, float]] | None) -> str:
    if not samples:
        return "<mouseTracking>None</mouseTracking>"
    return "".join(
        f"<mouseTracking><time>{t}</time><x>{x}</x><y>{y}</y></mouseTracking>"
        for t, x, y in samples
    )


def clicks_xml(clicks: list[tuple[int, float, float]] | None) -> str:
    if not clicks:
        return "<selectedRecord>None</selectedRecord>"
    return "".join(
        f"<selectedRecord><time>{t}</time><x>{x}</x><y>{y}</y></selectedRecord>"
        for t, x, y in clicks
    )


def metadata_xml(
    *,
    image_id: str,
    selected: bool,
    clicks=None,
    trace=None,
    worker: str = "A1B2C3D4E5",
    estimate: int = 800,
    width: int = 500,
    height: int = 375,
    page: int = 3,
) -> str:
    """One <metadata> block, tags in sorted order as the release writes them."""
    n_clicks = len(clicks or [])
    return (
        "<metadata>"
        "<assignment_id>3A1PQ49WVHGPAZX8EXEGE2KOSYS1HE</assignment_id>"
        f"<estimateTime>{estimate}</estimateTime>"
        "<hit_id>3HXCEECSQ4HXT9A9IRMIGN2RP9YZYX</hit_id>"
        "<hit_submit_time>1600000100</hit_submit_time>"
        "<hoveredCount>1</hoveredCount>"
        f"<hoveredRecord><action>enter</action><time>{T0}</time></hoveredRecord>"
        f"<hoveredRecord><action>leave</action><time>{T0 + 900}</time></hoveredRecord>"
        "<imageHeight>192</imageHeight>"
        f"<imageID>{image_id}</imageID>"
        "<imagePosition><x>250</x><y>40</y></imagePosition>"
        "<imageWidth>192</imageWidth>"
        "<image_idx>7</image_idx>"
        "<imagenet_hit_id>0123456789abcdef0123456789abcdef</imagenet_hit_id>"
        f"{trace_xml(trace)}"
        f"<originalImageHeight>{height}</originalImageHeight>"
        f"<originalImageWidth>{width}</originalImageWidth>"
        f"<page_idx>{page}</page_idx>"
        f"<selected>{selected}</selected>"
        f"<selectedCount>{n_clicks}</selectedCount>"
        f"{clicks_xml(clicks)}"
        f"<worker_id>{worker}</worker_id>"
        "</metadata>"
    )


def ilsvrc_xml(wnid: str, stem: str, blocks: list[str], width=500, height=375, box=None) -> str:
    """The ILSVRC box XML (pretty-printed, as ImageNet ships it) with byproducts appended."""
    x0, y0, x1, y1 = box or (50, 75, 250, 300)
    return (
        f"<annotation>\n\t<folder>{wnid}</folder>\n\t<filename>{stem}</filename>\n"
        "\t<source>\n\t\t<database>ILSVRC_2012</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n"
        "\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n"
        f"\t<object>\n\t\t<name>{wnid}</name>\n\t\t<pose>Unspecified</pose>\n"
        "\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n"
        f"\t\t<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n"
        f"\t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        + "".join(blocks)
        + "</annotation>\n"
    )


def bare_xml(wnid: str, stem: str, blocks: list[str]) -> str:
    head = f"<annotation><filename>{stem}</filename><folder>{wnid}</folder>"
    return head + "".join(blocks) + "</annotation>"


def write_tar(path: Path, members: list[tuple[str, str | bytes]]) -> Path:
    """A tar.gz of (name, text) members, in the given order (duplicates allowed)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members:
            data = text.encode() if isinstance(text, str) else text
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --- the reference ImageNet-AB fixture -----------------------------------------------------
# n01440764_1: ILSVRC shape, two positive annotations.
#   A: clicks (0.2, 0.4) then (0.3, 0.5); trace of 3 samples, one slightly outside (x = 1.02)
#   B: one click (0.6, 0.8); no trace (literal None)
#   -> point = mean of first clicks = ((0.2 + 0.6) / 2, (0.4 + 0.8) / 2) = (0.4, 0.6)
#   -> n_clicks 3, n_trace 3; box (50, 75, 250, 300) px of 500x375 = (0.1, 0.2, 0.5, 0.8)
# n01440764_2: bare shape, one negative annotation with one click -> point null, n_trace 2
# n02000000_7: bare shape, positive but never clicked -> point null, n_clicks 0
# n01530575_3: bare shape, two annotations, the first negative (its click is not the point)
#   -> point = the positive's first click (0.25, 0.75)
IMAGENET_WNIDS = ["n01440764", "n01530575", "n02000000"]  # sorted: labels 0, 1, 2


def imagenet_members() -> list[tuple[str, str]]:
    a = metadata_xml(
        image_id="n01440764/n01440764_1",
        selected=True,
        clicks=[(T0 + 1000, 0.2, 0.4), (T0 + 1500, 0.3, 0.5)],
        trace=[(T0 + 10, 0.5, 0.5), (T0 + 27, 1.02, 0.45), (T0 + 44, 0.25, 0.125)],
        worker="AAAAAAAAAA",
        estimate=640,
    )
    b = metadata_xml(
        image_id="n01440764/n01440764_1",
        selected=True,
        clicks=[(T0 + 2000, 0.6, 0.8)],
        worker="BBBBBBBBBB",
        estimate=0,
    )
    neg = metadata_xml(
        image_id="n01440764/n01440764_2",
        selected=False,
        clicks=[(T0 + 3000, 0.9, 0.9)],
        trace=[(T0 + 100, 0.1, 0.2), (T0 + 117, 0.15, 0.25)],
        width=320,
        height=480,
    )
    unclicked = metadata_xml(image_id="n02000000/n02000000_7", selected=True, width=64, height=64)
    mixed = [
        metadata_xml(image_id="n01530575/n01530575_3", selected=False, clicks=[(T0, 0.9, 0.1)]),
        metadata_xml(image_id="n01530575/n01530575_3", selected=True, clicks=[(T0, 0.25, 0.75)]),
    ]
    return [
        ("train_xml/n01440764/n01440764_1.xml", ilsvrc_xml("n01440764", "n01440764_1", [a, b])),
        ("train_xml/n01440764/n01440764_2.xml", bare_xml("n01440764", "n01440764_2", [neg])),
        ("README.txt", "not an annotation"),
        ("train_xml/n01530575/n01530575_3.xml", bare_xml("n01530575", "n01530575_3", mixed)),
        ("train_xml/n02000000/n02000000_7.xml", bare_xml("n02000000", "n02000000_7", [unclicked])),
    ]


# --- the reference COCO-AB fixture ---------------------------------------------------------
# 9: add person (0.1,0.2)@100, add dog (0.5,0.5)@200, move person ->(0.3,0.4)@300,
#    remove dog @400, add cat (0.7,0.8)@500.
#    replay -> person (0.3,0.4,300), cat (0.7,0.8,500): labels [0 person, 15 cat]
#    last-add -> person (0.1,0.2,100), dog (0.5,0.5,200), cat (0.7,0.8,500): [0, 15, 16 dog]
# 25: no icons, empty trace.  30: never loaded (0 x 0) -> zero-size reject.
def coco_action(kind: str, icon: str, t: int, to=None, frm=None) -> dict:
    def point(p):
        return None if p is None else {"x": p[0], "y": p[1]}

    return {
        "actionType": kind,
        "iconType": icon,
        "pointFrom": point(frm),
        "pointTo": point(to),
        "timeAt": t,
    }


def coco_record(image_id: int, actions=(), trace=(), width=640, height=480, **extra) -> dict:
    rec = {
        "image_id": image_id,
        "worker_id": "W0RKER0001",
        "hit_id": "0123456789abcdef0123456789abcdef",
        "page_id": 4,
        "imageWidth": 400,
        "imageHeight": 400,
        "originalImageWidth": width,
        "originalImageHeight": height,
        "timeSpent": 5200,
        "actionHistories": list(actions),
        "categoryHistories": [
            {"categoryIndex": 0, "categoryName": "person", "timeAt": 50, "usingKeyboard": False}
        ],
        "mouseTracking": [{"timeAt": t, "x": x, "y": y} for t, x, y in trace],
    }
    rec.update(extra)
    return rec


def coco_records() -> list[dict]:
    return [
        coco_record(
            9,
            [
                coco_action("add", "person", 100, to=(0.1, 0.2)),
                coco_action("add", "dog", 200, to=(0.5, 0.5)),
                coco_action("move", "person", 300, to=(0.3, 0.4), frm=(0.1, 0.2)),
                coco_action("remove", "dog", 400, frm=(0.5, 0.5)),
                coco_action("add", "cat", 500, to=(0.7, 0.8)),
            ],
            trace=[(10, 0.1, 0.1), (20, 0.2, 0.25)],
        ),
        coco_record(25),
        coco_record(30, width=0, height=0),
    ]


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records, indent=1))
    return path
