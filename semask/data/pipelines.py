"""Which data path a model family trains and tests on.

The official SeMask code feeds its two code bases differently: the Semantic-FPN and MiT models
went through mmsegmentation's pipeline (:mod:`.transforms`: keep-ratio "fit" resizes, random
crop with retries, photometric distortion), the mask-classification models through detectron2's
(:mod:`.detectron2`: short-edge resizes with PIL, SSD colour augmentation, raw padding). A
:class:`DataPipeline` bundles one path's data-field rules, training transform (built from
:class:`semask.config.DataConfig`) and test resize; :func:`pipeline_for` picks it from the model
config's ``model_type``, and training, evaluation, prediction, serving, explanations and
``check-data`` all ask it, so no option travels down to choose.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .detectron2 import ShortEdgeTestTransform, ShortEdgeTrainTransform
from .transforms import TestTransform, TrainTransform, Transform

if TYPE_CHECKING:
    from ..config import DataConfig

#: DataConfig fields only the detectron2 path reads.
DETECTRON2_FIELDS = ("short_edges", "max_size", "pad_size", "pad_value")


class DataPipeline:
    """One family's data path: :meth:`check`, :meth:`train_transform`, :meth:`test_views`."""

    name = ""

    def check(self, data: DataConfig, training: bool = False) -> None:
        """Raise ``ValueError`` naming the ``data.*`` fields this path cannot use and, with
        ``training``, the training fields it needs and lacks. Every config is checked without
        ``training`` (a test-only config passes); the trainer checks with it before it touches the
        work dir or the data, and :meth:`train_transform` does too."""

    def train_transform(
        self, data: DataConfig, mean: Sequence[float], std: Sequence[float], ignore_index: int
    ) -> Transform:
        raise NotImplementedError

    def test_views(
        self,
        image: np.ndarray,
        scale: tuple[int, int] | None,
        ratios: Sequence[float] = (1.0,),
        sizes: Sequence[int] | None = None,
        max_size: int | None = None,
    ) -> Iterator[np.ndarray]:
        """The resized images a (multi-scale) test runs on, before flips: one per ratio of
        ``scale``, or, with ``sizes``, one per short-edge size (long edge at most ``max_size``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MMSegPipeline(DataPipeline):
    """mmsegmentation 0.x: :class:`~.transforms.TrainTransform` / :class:`~.transforms.TestTransform`
    (Semantic-FPN, MiT / SegFormer and everything else)."""

    name = "mmseg"

    def check(self, data: DataConfig, training: bool = False) -> None:
        defaults = {f.name: f.default for f in dataclasses.fields(data)}
        used = [f"data.{k}" for k in DETECTRON2_FIELDS if getattr(data, k) != defaults[k]]
        if used:
            raise ValueError(
                f"{', '.join(used)} belong to detectron2's data path (mask-classification models); this model "
                "trains on mmseg's: set data.scale with data.ratios or data.ratio_range instead"
            )
        if training and data.scale is None:
            raise ValueError("data.scale (the (long, short) base scale of mmseg's resize) is needed by this model")

    def train_transform(
        self, data: DataConfig, mean: Sequence[float], std: Sequence[float], ignore_index: int
    ) -> Transform:
        self.check(data, training=True)
        assert data.scale is not None
        return TrainTransform(
            crop_size=data.crop_size,
            scale=data.scale,
            ratio_range=data.ratio_range,
            ratios=data.ratios,
            cat_max_ratio=data.cat_max_ratio,
            flip_prob=data.flip_prob,
            photometric=data.photometric,
            mean=mean,
            std=std,
            ignore_index=ignore_index,
        )

    def test_views(
        self,
        image: np.ndarray,
        scale: tuple[int, int] | None,
        ratios: Sequence[float] = (1.0,),
        sizes: Sequence[int] | None = None,
        max_size: int | None = None,
    ) -> Iterator[np.ndarray]:
        """mmseg has no short-edge test: ``sizes`` fit ``(max_size, size)`` on the original image."""
        if sizes is not None:
            assert max_size is not None
            return (TestTransform((max_size, s)).resize(image) for s in sizes)
        transform = TestTransform(scale)
        return (transform.resize(image, ratio) for ratio in ratios)


class Detectron2Pipeline(DataPipeline):
    """detectron2 (the SeMask MaskFormer / Mask2Former code): :class:`~.detectron2.ShortEdgeTrainTransform`
    / :class:`~.detectron2.ShortEdgeTestTransform`. ``data.short_edges``, ``max_size``, ``crop_size``,
    ``cat_max_ratio`` (``SINGLE_CATEGORY_MAX_AREA``), ``photometric`` (``COLOR_AUG_SSD``),
    ``flip_prob``, ``pad_size``, ``pad_value`` configure it; ``data.scale`` and the ratios are mmseg's."""

    name = "detectron2"

    def check(self, data: DataConfig, training: bool = False) -> None:
        if training and (data.short_edges is None or data.max_size is None):
            raise ValueError(
                "this model trains on detectron2's data path: set data.short_edges (INPUT.MIN_SIZE_TRAIN) and "
                "data.max_size (INPUT.MAX_SIZE_TRAIN), and data.scale, data.ratios and data.ratio_range to null "
                "(see the recipes under mask2former/)"
            )

    def train_transform(
        self, data: DataConfig, mean: Sequence[float], std: Sequence[float], ignore_index: int
    ) -> Transform:
        self.check(data, training=True)
        assert data.short_edges is not None and data.max_size is not None
        return ShortEdgeTrainTransform(
            short_edges=data.short_edges,
            max_size=data.max_size,
            crop_size=data.crop_size,
            max_area=data.cat_max_ratio,
            color_aug=data.photometric,
            flip_prob=data.flip_prob,
            pad_size=data.pad_size,
            pad_value=data.pad_value,
            mean=mean,
            std=std,
            ignore_index=ignore_index,
        )

    def test_views(
        self,
        image: np.ndarray,
        scale: tuple[int, int] | None,
        ratios: Sequence[float] = (1.0,),
        sizes: Sequence[int] | None = None,
        max_size: int | None = None,
    ) -> Iterator[np.ndarray]:
        """``sizes`` resize the ``scale``-resized image again, as ``DatasetMapperTTA`` does."""
        transform = ShortEdgeTestTransform(scale)
        if sizes is not None:
            assert max_size is not None
            return transform.views(image, sizes, max_size)
        return (transform.resize(image, ratio) for ratio in ratios)


MMSEG = MMSegPipeline()
DETECTRON2 = Detectron2Pipeline()
# model_type -> data path of the official code that trained the family; anything else is mmseg's
_PIPELINES: dict[str, DataPipeline] = {"semask_maskformer": DETECTRON2}


def pipeline_for(model_config: Any) -> DataPipeline:
    """The data path of the family of ``model_config`` (a model config, or ``None`` for a plain
    callable): detectron2's for the mask-classification models, mmseg's for the others."""
    return _PIPELINES.get(getattr(model_config, "model_type", ""), MMSEG)
