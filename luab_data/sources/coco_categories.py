"""COCO class names -> category id -> contiguous 0..79 index, as the official loader maps them.

The 91-entry name list of the COCO paper: id = index + 1. Eleven ids were never annotated in
the 2014/2017 releases (street sign, hat, shoe, ...); an icon of one of them is a class outside
the 80 and is rejected as unknown, like a misspelt name.
"""

from __future__ import annotations

COCO_91_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench",
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
    "hat", "backpack", "umbrella", "shoe", "eye glasses", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror",
    "dining table", "window", "desk", "toilet", "door", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "blender",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush",
)  # fmt: skip
UNUSED_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91})

# id of each of the 80 used classes, in sorted id order: position = contiguous index
COCO_80_IDS = tuple(i for i in range(1, 92) if i not in UNUSED_IDS)
COCO_80_NAMES = tuple(COCO_91_NAMES[i - 1] for i in COCO_80_IDS)
NAME_TO_INDEX = {name: k for k, name in enumerate(COCO_80_NAMES)}

assert len(COCO_91_NAMES) == 91 and len(COCO_80_IDS) == 80
