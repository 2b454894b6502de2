"""The bundled sample: simulated annotators writing official-format ImageNet-AB / COCO-AB data.

Real objects (the 70,000 Fashion-MNIST items, all 10 classes) are pasted at random position and
scale on backgrounds of varied size and aspect ratio; the object boxes are known. The
background carries a shortcut: in the training split each class comes with its own background
family with probability rho (exactly round(rho * n_c) images of each class); `val_id` follows
the same law, `val_ood` draws the background independently of the class. Simulated annotators
(each with their own rate, speed, wobble, tremor, dwell, aim and error habits) produce the
byproducts in the releases' own formats, quirks included (docs/RELEASE_FORMATS.md).

Layout of `luab-data sample --out DIR --kind imagenet-ab`::

    DIR/imagenet_ab_v1_0.tar.gz          train_xml/<wnid>/<stem>.xml, one per training image
    DIR/train/<wnid>/<stem>.JPEG         training images (stem = <wnid>_<n>)
    DIR/val_id/<wnid>/<stem>.JPEG        held-out, same background law as train
    DIR/val_ood/<wnid>/<stem>.JPEG       held-out, background independent of the class
    DIR/{train,val_id,val_ood}/labels.csv  image, key, wnid, class, box (px), background, ...
    DIR/classes.txt                      the 10 wnids, sorted (the readers' --classes)
    DIR/sample.json                      spec, class table, measured rho per split, counts
    DIR/planted.jsonl                    with --corrupt: {"key", "reason", "where"} per record

and `--kind coco-ab`::

    DIR/coco_ab_v1_0.json                the JSON list, one element per training image
    DIR/train2014/COCO_train2014_%012d.jpg, DIR/train2014/labels.csv
    DIR/val_id/COCO_val2014_%012d.jpg, DIR/val_ood/COCO_val2014_%012d.jpg (+ labels.csv)
    DIR/annotations/instances_train2014.json, instances_val_id.json, instances_val_ood.json
    DIR/classes.txt, DIR/sample.json, DIR/planted.jsonl

With `--no-images` only the byproducts, train labels, classes.txt and sample.json are written
(benchmark scale). Python API::

    from luab_data.sample import SampleSpec, generate_sample, contact_sheet
    generate_sample("data/sample", SampleSpec(kind="imagenet-ab", size=2500, seed=0))
"""

from luab_data.sample.annotators import AnnotatorConfig
from luab_data.sample.contact_sheet import contact_sheet
from luab_data.sample.generate import (
    COCO_AB,
    IMAGENET_AB,
    KINDS,
    SIZES,
    SampleSpec,
    generate_sample,
    parse_size,
)

__all__ = [
    "COCO_AB",
    "IMAGENET_AB",
    "KINDS",
    "SIZES",
    "AnnotatorConfig",
    "contact_sheet",
    "SampleSpec",
    "generate_sample",
    "parse_size",
]
