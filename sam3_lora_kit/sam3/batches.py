"""Dataset items -> ``sam3``'s ``BatchedDatapoint``, with ``sam3.train``'s own data classes, transforms and collator.

SAM 3 is trained with text queries: each query is an (image, noun phrase) pair and its targets
are the objects the phrase names. So the batch dimension of a ``BatchedDatapoint`` is queries,
not images. For every image the builder makes

* one query per category present, named by the category, holding only that category's objects;
* hard-negative queries for absent categories (``negative_ratio`` per positive query), with no
  targets: they teach the presence head to answer "nothing here".

Geometry follows the official training recipe (``roboflow_v100_full_ft_100_images.yaml``):
optional horizontal flip, square resize, pad bottom-right to ``image_size``, ``ToTensorAPI``,
``NormalizeAPI`` (mean = std = 0.5), which turns boxes into normalised ``cx, cy, w, h``: the
format the matcher and losses read through ``Sam3Image.back_convert``. Randomness comes from
the builder's own ``random.Random(seed)``, so a builder made with the same seed yields the same
batches.
"""
from __future__ import annotations

import math
import random
from typing import Any, Sequence

import torch

__all__ = ["BatchBuilder", "NORM_MEAN", "NORM_STD"]

NORM_MEAN = (0.5, 0.5, 0.5)  # sam3's training and evaluation normalisation
NORM_STD = (0.5, 0.5, 0.5)


class BatchBuilder:
    """Turn dataset items (see ``CocoSegmentationDataset``) into a ``BatchedDatapoint``.

    Args:
        category_names: the K category names; index ``k - 1`` names ``category_id`` k.
        image_size: the model's input side in pixels (images become ``image_size`` squared).
        negative_ratio: hard-negative queries per positive query (rounded up, at most the
            absent categories; an image without objects gets ``ceil(negative_ratio)``).
        flip_prob: probability of a horizontal flip per image (0 for evaluation).
        min_scale: images are resized to a side drawn from ``[min_scale, 1] * image_size`` and
            padded bottom-right to ``image_size`` (1.0, the default, means no scale jitter).
        all_categories: one query per category for every image (evaluation; overrides
            ``negative_ratio``).
        seed: seeds the builder's own random generator.
    """

    def __init__(
        self,
        category_names: Sequence[str],
        image_size: int,
        negative_ratio: float = 1.0,
        flip_prob: float = 0.0,
        min_scale: float = 1.0,
        all_categories: bool = False,
        seed: int = 0,
    ) -> None:
        if not category_names:
            raise ValueError("category_names is empty: the dataset has no categories")
        if not 0.0 < min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        if negative_ratio < 0:
            raise ValueError(f"negative_ratio must be >= 0, got {negative_ratio}")
        self.category_names = list(category_names)
        self.image_size = int(image_size)
        self.negative_ratio = float(negative_ratio)
        self.flip_prob = float(flip_prob)
        self.min_scale = float(min_scale)
        self.all_categories = all_categories
        self.rng = random.Random(seed)

    def query_categories(self, category_ids: torch.Tensor) -> tuple[list[int], list[int]]:
        """``(positive, negative)`` category ids to query for an image holding ``category_ids``."""
        present = sorted({int(c) for c in category_ids.tolist()})
        every = range(1, len(self.category_names) + 1)
        absent = [c for c in every if c not in present]
        if self.all_categories:
            return present, absent
        wanted = math.ceil(self.negative_ratio * max(len(present), 1))
        negatives = sorted(self.rng.sample(absent, min(wanted, len(absent))))
        return present, negatives

    def datapoint(self, sample: dict[str, Any]):
        """One image's ``sam3.train`` ``Datapoint``: objects, its queries, transformed like the model's input."""
        from sam3.train.data.sam3_image_dataset import Datapoint, FindQueryLoaded, Image, InferenceMetadata, Object
        from torchvision.transforms.functional import to_pil_image

        image = sample["image"]  # (3, H, W) uint8
        masks = sample["masks"]  # (N, H, W) bool
        boxes = sample["boxes"]  # (N, 4) xyxy pixels
        category_ids = sample["category_ids"]  # (N,)
        height, width = image.shape[-2:]
        image_id = int(sample["image_id"])
        objects = [
            Object(
                bbox=boxes[j].to(torch.float32).clone(),
                area=float(masks[j].sum()),
                object_id=j,
                frame_index=0,
                segment=masks[j].to(torch.uint8),  # sam3 keeps segments uint8 through its transforms
            )
            for j in range(len(boxes))
        ]
        positive, negative = self.query_categories(category_ids)
        queries = []
        for category_id in positive + negative:
            object_ids = [j for j in range(len(objects)) if int(category_ids[j]) == category_id]
            queries.append(
                FindQueryLoaded(
                    query_text=self.category_names[category_id - 1],
                    image_id=0,  # index of the image inside this datapoint
                    object_ids_output=object_ids,
                    is_exhaustive=True,
                    query_processing_order=0,
                    inference_metadata=InferenceMetadata(
                        coco_image_id=image_id,
                        original_image_id=image_id,
                        original_category_id=category_id,
                        original_size=(int(height), int(width)),
                        object_id=-1,
                        frame_index=0,
                    ),
                )
            )
        pil = to_pil_image(image)
        datapoint = Datapoint(find_queries=queries, images=[Image(data=pil, objects=objects, size=(int(height), int(width)))])
        return self._transform(datapoint)

    def _transform(self, datapoint):
        """Flip, resize, pad, to tensor, normalise: ``sam3.train.transforms.basic_for_api``'s functions."""
        from sam3.train.transforms import basic_for_api as T

        if self.flip_prob > 0 and self.rng.random() < self.flip_prob:
            datapoint = T.hflip(datapoint, 0)
        side = self.image_size
        if self.min_scale < 1.0:
            side = self.rng.randint(math.ceil(self.min_scale * self.image_size), self.image_size)
        datapoint = T.resize(datapoint, 0, side, square=True)
        if side < self.image_size:
            datapoint = T.pad(datapoint, 0, (self.image_size - side, self.image_size - side))
        datapoint = T.ToTensorAPI()(datapoint)
        return T.NormalizeAPI(mean=list(NORM_MEAN), std=list(NORM_STD))(datapoint)

    def __call__(self, samples: Sequence[dict[str, Any]]):
        """Collate ``samples`` (dataset items) into one ``BatchedDatapoint`` with segmentation masks."""
        from sam3.train.data.collator import collate_fn_api

        if not samples:
            raise ValueError("no samples to batch")
        datapoints = [self.datapoint(sample) for sample in samples]
        if not any(dp.find_queries for dp in datapoints):
            raise ValueError("batch has no queries: its images hold no objects and negative_ratio is 0")
        return collate_fn_api(datapoints, dict_key="batch", with_seg_masks=True)["batch"]
