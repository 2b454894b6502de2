"""The ten sample classes: one Fashion-MNIST class each, named as ImageNet and COCO name them.

ImageNet-side wnids are real ImageNet-1K clothing classes, so the readers' class index (position
in the sorted 1,000 wnids) works unchanged. COCO has no clothing classes: the COCO names are
stand-ins from the accessory and sports super-categories, with their real COCO category ids.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SampleClass:
    index: int  # Fashion-MNIST label, also our 0..9 class index
    fashion: str
    wnid: str
    imagenet_name: str
    coco_name: str
    coco_id: int
    coco_super: str


CLASSES: tuple[SampleClass, ...] = (
    SampleClass(0, "T-shirt/top", "n03595614", "jersey", "tie", 32, "accessory"),
    SampleClass(1, "Trouser", "n03594734", "jean", "skis", 35, "sports"),
    SampleClass(2, "Pullover", "n04370456", "sweatshirt", "snowboard", 36, "sports"),
    SampleClass(3, "Dress", "n03450230", "gown", "kite", 38, "sports"),
    SampleClass(4, "Coat", "n04479046", "trench_coat", "umbrella", 28, "accessory"),
    SampleClass(5, "Sandal", "n04133789", "sandal", "frisbee", 34, "sports"),
    SampleClass(6, "Shirt", "n02963159", "cardigan", "suitcase", 33, "accessory"),
    SampleClass(7, "Sneaker", "n04120489", "running_shoe", "sports ball", 37, "sports"),
    SampleClass(8, "Bag", "n04026417", "purse", "handbag", 31, "accessory"),
    SampleClass(9, "Ankle boot", "n03124043", "cowboy_boot", "backpack", 27, "accessory"),
)
N_CLASSES = len(CLASSES)
WNIDS = tuple(c.wnid for c in CLASSES)

# COCO-AB's category tabs (11 super-categories; the icon palette of the annotation front end)
COCO_TABS = (
    "outdoor",
    "accessory",
    "sports",
    "kitchen",
    "food",
    "furniture",
    "electronic",
    "appliance",
    "indoor",
    "vehicle",
    "animal",
)
