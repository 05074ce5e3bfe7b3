"""Experiment configuration: typed dataclasses read from YAML with `_base_` inheritance.

A run is fully described by one :class:`ExperimentConfig`. YAML files set it, ``a.b.c=value``
overrides adjust it from the command line, and the resolved result is written into the work
dir so a run can always be reproduced from its own folder.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .models.base import BINARY_HINT, MS_RATIOS


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key and the value."""


@dataclass
class ModelSection:
    """Which model to build: a registered name plus overrides of its config fields.

    ``pretrained`` initialises the whole model (a name ``preset.tag`` or any file ``semask.load``
    reads); ``backbone_weights`` only the encoder (``imagenet``, a name, or an ImageNet file).
    ``reset_classes`` fine-tunes ``pretrained`` weights on the dataset's classes: every tensor that
    does not depend on the class count is loaded, the class-specific ones start fresh (rows of
    classes with the same name are copied; the report goes to train.log).
    """

    name: str = "semask_swin_t_fpn"
    overrides: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    backbone_weights: str | None = None
    reset_classes: bool = False
    grad_checkpointing: bool = False  # recompute encoder stages in backward: less memory, ~1 more forward
    freeze_encoder: bool = False  # train only the decoder (no encoder gradients are computed)

    def __post_init__(self) -> None:
        """Check the name and every override against the preset now, not when training starts."""
        from .models import get_config

        if self.reset_classes and self.pretrained is None:
            raise ValueError("model.reset_classes applies to model.pretrained weights; set model.pretrained too")
        if self.overrides.get("num_classes") == 1:
            raise ValueError(BINARY_HINT.format(where="model.overrides.num_classes"))
        try:
            get_config(self.name, **self.overrides)
        except (KeyError, TypeError) as exc:
            raise ValueError(str(exc).strip("'\"")) from None
        except ValueError as exc:
            raise ValueError(f"model.overrides {self.overrides} do not fit {self.name}: {exc}") from None


@dataclass
class DataConfig:
    """Dataset location and the training augmentation of the model family's data path
    (:func:`semask.data.pipelines.pipeline_for`: mmseg's, spec section 6, or detectron2's).

    ``ratios`` (a list to pick one from: the SeMask fork's ``ratio_range=[...]``, SeMask on
    ADE20K / COCO-Stuff) and ``ratio_range`` (uniform in [lo, hi): mmseg's tuple, Cityscapes and
    the Swin / SegFormer baselines) are alternatives: set exactly one (null both with
    ``short_edges``). ``num_classes`` and ``reduce_zero_label`` default to what the dataset type
    defines. ``kwargs`` go to ``build_dataset`` unchanged.

    Folder datasets (``type: folder``) also take ``ignore_index`` (the label value not trained
    on or scored, default 255; also the padding fill of training crops), ``img_suffix`` /
    ``label_suffix`` (file name endings), ``ignore_color`` (the colour of unlabelled pixels in
    RGB colour-mask labels, which palette.txt maps to ids) and ``in_channels`` (null: the
    model's). A split is a folder name under ``images/``, or a list ``splits/NAME.txt``, or a
    path to a ``.txt`` list of names. See :class:`semask.data.FolderDataset`.
    """

    type: str = "ade20k"
    root: str = "data/ade/ADEChallengeData2016"
    train_split: str = "training"
    val_split: str | None = "validation"
    num_classes: int | None = None
    reduce_zero_label: bool | None = None
    crop_size: tuple[int, int] = (512, 512)
    scale: tuple[int, int] | None = (2048, 512)
    ratios: list[float] | None = field(default_factory=lambda: list(MS_RATIOS))
    ratio_range: tuple[float, float] | None = None
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    num_workers: int = 4
    # checked before the first iteration, both splits: "headers" (sizes, modes, truncation),
    # "full" (also decodes every label for its class-id range) or "none"
    check: Literal["none", "headers", "full"] = "headers"
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Folder datasets (type "folder") only; see semask.data.FolderDataset.
    ignore_index: int = 255
    img_suffix: str | None = None
    label_suffix: str = ".png"
    ignore_color: tuple[int, int, int] | None = None
    in_channels: int | None = None  # image bands; null: model.overrides.in_channels (default 3, RGB)
    # detectron2's data path (the mask-classification models; semask.data.detectron2), which replaces
    # scale/ratios/ratio_range: the short edge is picked from short_edges (INPUT.MIN_SIZE_TRAIN), the
    # long edge capped at max_size (INPUT.MAX_SIZE_TRAIN, fixed); the raw crop is padded bottom/right
    # to pad_size x pad_size (INPUT.SIZE_DIVISIBILITY; null: no padding) with pad_value (label: the
    # ignore index) before normalisation. cat_max_ratio is SINGLE_CATEGORY_MAX_AREA there.
    short_edges: list[int] | None = None
    max_size: int | None = None
    pad_size: int | None = None
    pad_value: int = 128

    def __post_init__(self) -> None:
        if self.short_edges is not None:
            mmseg = {"scale": self.scale, "ratios": self.ratios, "ratio_range": self.ratio_range}
            if any(v is not None for v in mmseg.values()) or not self.short_edges or self.max_size is None:
                raise ValueError(
                    f"short_edges ({self.short_edges!r}) needs max_size ({self.max_size!r}) and replaces scale, "
                    f"ratios and ratio_range ({mmseg}); set those to null"
                )
            if min(self.short_edges) < 1 or self.max_size < 1:
                raise ValueError(f"short_edges and max_size must be positive, got {self.short_edges}, {self.max_size}")
        elif (self.ratios is None) == (self.ratio_range is None):
            raise ValueError(
                f"set exactly one of ratios ({self.ratios!r}) and ratio_range ({self.ratio_range!r}); "
                "use null for the other"
            )
        if self.pad_size is not None and self.pad_size < max(self.crop_size):
            raise ValueError(f"pad_size ({self.pad_size}) must be at least the crop size {self.crop_size}")
        if not 0 <= self.pad_value <= 255:
            raise ValueError(f"pad_value is a raw 8-bit pixel value (0..255), got {self.pad_value}")
        if self.num_classes == 1:
            raise ValueError(BINARY_HINT.format(where="data.num_classes"))
        if not 0 <= self.ignore_index <= 255:
            raise ValueError(f"ignore_index must be 0..255 (labels are 8-bit), got {self.ignore_index}")
        if self.type != "folder":
            custom = {
                k: v
                for k, v in self.folder_options().items()
                if v != _FOLDER_DEFAULTS[k] and not (k == "in_channels" and v == 3)
            }
            if custom:
                raise ValueError(f"{sorted(custom)} apply to type 'folder' datasets only, not {self.type!r}")

    def folder_options(self) -> dict[str, Any]:
        """The folder-only settings as ``build_dataset`` keyword arguments."""
        return {k: getattr(self, k) for k in _FOLDER_DEFAULTS}

    def dataset_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``build_dataset(type, root, split, **kwargs)`` of this config."""
        out = {**self.kwargs, "num_classes": self.num_classes, "reduce_zero_label": self.reduce_zero_label}
        if self.type == "folder":
            out.update(self.folder_options())
        return out


_FOLDER_DEFAULTS: dict[str, Any] = dict(
    ignore_index=255, img_suffix=None, label_suffix=".png", ignore_color=None, in_channels=None
)

# Loss names; semask.models.loss.LOSSES maps each to its class (a test keeps the two in step).
LossName = Literal["ce", "ohem", "dice", "focal", "lovasz"]
# Which LossTermConfig options each loss takes (besides name and weight).
LOSS_OPTIONS: dict[str, tuple[str, ...]] = {
    "ce": ("class_weight", "label_smoothing", "reduction"),
    "ohem": ("class_weight", "label_smoothing", "reduction", "thresh", "min_kept"),
    "focal": ("class_weight", "reduction", "gamma"),
    "dice": ("class_weight", "smooth", "exponent"),
    "lovasz": (),
}


@dataclass
class LossTermConfig:
    """One weighted loss term. ``class_weight``: a list (one per class), or ``auto`` for
    ``w_c = 1 / ln(1.02 + f_c)`` with ``f_c`` class c's share of the labelled pixels of the
    training split (the ENet rule; an absent class gets the largest weight, 1 / ln 1.02 = 50.5).
    ``reduction`` null takes the model's ``loss_reduction`` (``all`` for the paper's models).
    ``thresh``/``min_kept``: OHEM (``thresh: null`` keeps the ``min_kept`` x batch highest-loss
    pixels, mmseg's ``OHEMPixelSampler(thresh=None)``); ``gamma``: focal; ``smooth``/``exponent``: Dice."""

    name: LossName = "ce"
    weight: float = 1.0
    class_weight: list[float] | Literal["auto"] | None = None
    label_smoothing: float = 0.0
    reduction: Literal["all", "valid"] | None = None
    thresh: float | None = 0.7
    min_kept: int = 100000
    gamma: float = 2.0
    smooth: float = 1.0
    exponent: float = 2.0

    def __post_init__(self) -> None:
        allowed = LOSS_OPTIONS[self.name]
        for f in dataclasses.fields(self):
            if f.name in ("name", "weight") or f.name in allowed:
                continue
            if getattr(self, f.name) != f.default:
                raise ValueError(f"{f.name} does not apply to the {self.name!r} loss (it takes {list(allowed)})")
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")

    def spec(self, num_classes: int, auto_weights: list[float] | None, default_reduction: str) -> dict[str, Any]:
        """Keyword arguments for ``semask.models.loss.build_loss``."""
        out: dict[str, Any] = {"name": self.name, "weight": self.weight}
        for key in LOSS_OPTIONS[self.name]:
            out[key] = getattr(self, key)
        if "reduction" in out and out["reduction"] is None:
            out["reduction"] = default_reduction
        if out.get("class_weight") == "auto":
            out["class_weight"] = auto_weights
        weights = out.get("class_weight")
        if weights is not None and len(weights) != num_classes:
            raise ValueError(f"loss {self.name}: class_weight has {len(weights)} values for {num_classes} classes")
        return out


@dataclass
class LossConfig:
    """Training losses of the decoder (``main``) and of the semantic-prior maps (``semantic``),
    each a list of weighted terms that are summed; L = main + semantic_weight * semantic.

    null everywhere (the default) is the paper's L = CE + 0.4 CE, computed by the model itself;
    ``main``/``semantic`` null is one CE term, ``semantic_weight`` null the model's
    ``semantic_loss_weight``. Mask-classification models keep their own set-prediction losses
    and refuse this section.
    """

    main: list[LossTermConfig] | None = None
    semantic: list[LossTermConfig] | None = None
    semantic_weight: float | None = None

    def __post_init__(self) -> None:
        for name in ("main", "semantic"):
            if getattr(self, name) == []:
                raise ValueError(f"loss.{name} needs at least one term (or null for cross-entropy)")
        if self.semantic_weight is not None and self.semantic_weight < 0:
            raise ValueError(f"semantic_weight must be >= 0, got {self.semantic_weight}")

    @property
    def is_default(self) -> bool:
        return self.main is None and self.semantic is None and self.semantic_weight is None

    def needs_auto_weights(self) -> bool:
        return any(t.class_weight == "auto" for t in (self.main or []) + (self.semantic or []))


@dataclass
class OptimConfig:
    """AdamW. No weight decay for the model's ``no_weight_decay()`` (its family's official recipe),
    or for names containing one of ``no_decay_keys`` when that is set."""

    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    no_decay_keys: tuple[str, ...] | None = None
    backbone_lr_mult: float = 1.0


@dataclass
class ScheduleConfig:
    """Iteration-based linear warmup from ``warmup_ratio * lr``, then poly decay to ``min_lr``."""

    iters: int = 80000
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.iters < 1 or not 0 <= self.warmup_iters <= self.iters:
            raise ValueError(f"need iters >= 1 and 0 <= warmup_iters <= iters, got {self.iters}, {self.warmup_iters}")


@dataclass
class TrainConfig:
    """Loop settings. ``batch_size`` is per process; the total batch is it x world size x grad_accum."""

    batch_size: int = 8
    grad_accum: int = 1
    amp: bool = False
    amp_dtype: Literal["bf16", "fp16"] = "bf16"
    clip_grad: float | None = None
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    sync_bn: bool = True
    log_interval: int = 50
    eval_interval: int = 8000
    ckpt_interval: int = 8000
    keep_last: int = 3
    tensorboard: bool = True
    dist_timeout: float = 600.0  # seconds a collective waits for the other ranks (torchrun) before failing

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "log_interval", "eval_interval", "ckpt_interval", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dist_timeout <= 0:
            raise ValueError(f"dist_timeout must be > 0 seconds, got {self.dist_timeout}")


@dataclass
class EvalConfig:
    """Test protocol: resize with ``scale`` = (long, short) the way the model's family was tested
    (mmseg's keep-ratio fit, or detectron2's short edge with a long-edge cap), whole or
    sliding-window inference.

    ``scales`` are the multi-scale ratios (``[1.0]`` = single scale); with ``flip`` each scale is
    also run mirrored and the probabilities are averaged at the original size. ``sizes`` replace
    the ratios by short-edge sizes (long edge at most ``max_size``): the mask-classification
    models' official multi-scale test, applied to the ``scale``-resized image as detectron2 does
    (``model.aug_test()`` gives each family's setting). ``window_batch``: sliding windows per
    forward pass (``None``: sized to free GPU memory, one on a CPU;
    :func:`semask.engine.inference.auto_window_batch`).
    """

    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    scale: tuple[int, int] | None = (2048, 512)
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    sizes: list[int] | None = None
    max_size: int | None = None
    window_batch: int | None = None

    def __post_init__(self) -> None:
        """Every setting that fits no image is refused here, so a loop over images never meets one."""
        from .data.transforms import as_pair

        if self.mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {self.mode!r}")
        if self.mode == "slide":
            if self.crop_size is None or self.stride is None:
                raise ValueError(
                    f"slide mode needs crop_size and stride, got crop_size={self.crop_size}, stride={self.stride}"
                )
            as_pair(self.crop_size, "crop_size")
            as_pair(self.stride, "stride")
        if self.window_batch is not None and self.window_batch < 1:
            raise ValueError(f"window_batch must be >= 1 (or null: sized to memory), got {self.window_batch}")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be a non-empty list of positive ratios, got {self.scales}")
        if self.sizes is not None and (not self.sizes or min(self.sizes) < 1 or not self.max_size):
            raise ValueError(f"sizes needs positive short-edge sizes and a max_size, got {self.sizes}, {self.max_size}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples): what a model records as its ``config.protocol``."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, protocol: dict[str, Any], source: str = "protocol") -> EvalConfig:
        """The protocol a model records (any subset of the fields; the rest keep their defaults), checked."""
        return _build(cls, dict(protocol), source, "eval.")

    @classmethod
    def of_model(cls, model: Any, default: EvalConfig) -> EvalConfig:
        """The test protocol ``model`` records in ``config.protocol``, or ``default`` if it records none."""
        protocol = getattr(getattr(model, "config", None), "protocol", None)
        return default if protocol is None else cls.from_dict(protocol, f"{type(model).__name__}.config.protocol")

    def predict_options(self) -> dict[str, Any]:
        """The keyword arguments of ``semask.predict`` / ``predict_folder`` / ``predict_image`` for this protocol."""
        return dict(
            scale=self.scale,
            mode=self.mode,
            crop_size=self.crop_size,
            stride=self.stride,
            scales=self.scales,
            flip=self.flip,
            sizes=self.sizes,
            max_size=self.max_size,
            window_batch=self.window_batch,
        )


@dataclass
class ExperimentConfig:
    """Everything a training or evaluation run needs."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        """Checks across sections: data fields and losses the model family cannot use."""
        bands = self.model.overrides.get("in_channels", 3)  # the model's mean/std give one value per band
        if self.data.in_channels is None:
            self.data.in_channels = bands
        elif self.data.in_channels != bands:
            raise ValueError(
                f"data.in_channels={self.data.in_channels} but the model takes {bands} channel(s); set "
                "model.overrides.in_channels (with mean and std per channel) and leave data.in_channels null"
            )
        if bands != 3 and self.data.photometric:
            raise ValueError(
                f"in_channels={bands}: the photometric distortion works on 8-bit RGB only; set data.photometric: false"
            )
        from .data.pipelines import pipeline_for
        from .models import get_config

        model_config = get_config(self.model.name, **self.model.overrides)
        pipeline_for(model_config).check(self.data)  # e.g. detectron2-only fields for an FPN model
        if not self.loss.is_default:
            family = model_config.model_type
            if family == "semask_maskformer":
                raise ValueError(
                    f"loss.* cannot be set for the mask-classification model {self.model.name}: it trains with "
                    "its own set-prediction losses (class CE + mask BCE + mask Dice, set with model.overrides "
                    "class_weight/mask_weight/dice_weight); remove the loss section"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists) for YAML, JSON and checkpoints."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], source: str = "<dict>", overrides: list[str] | tuple[str, ...] = ()
    ) -> ExperimentConfig:
        """Build from a nested dict (e.g. the config stored in a checkpoint), then apply overrides."""
        raw = copy.deepcopy(data)
        for item in overrides:
            key, value = parse_override(item)
            _set_nested(raw, key, value)
        if overrides:
            source = f"{source} with overrides {list(overrides)}"
        return _build(cls, raw, source, "")


AUG_TEST_RATIOS = list(MS_RATIOS)


#: The packaged recipes: one YAML per experiment of the paper (and the demo), shipped in the wheel.
RECIPES_DIR = Path(__file__).parent / "configs"

#: The paper's val mIoU (single-scale, multi-scale; None where it gives one number) of the recipes
#: whose model has no released weights: the Swin baselines (Table 2), the ablations (Tables 3-5) and
#: MiT-B4 (Table 6). Recipes of released models take their weights' numbers (:func:`paper_miou`).
PAPER_MIOU: dict[str, tuple[float, float | None]] = {
    **{
        f"swin_{size}_fpn_{dataset}": miou
        for dataset, row in {
            "ade20k": ((41.48, 42.89), (45.20, 46.96), (48.80, 50.28), (50.85, 52.95)),
            "cityscapes": ((71.81, 73.74), (75.19, 77.68), (76.54, 79.05), (78.03, 79.53)),
        }.items()
        for size, miou in zip("tsbl", row)
    },
    "trans_swin_t_fpn_ade20k": (41.42, None),  # Table 3
    "semask_swin_t_fpn_no_lambda_ade20k": (41.11, None),  # Table 4
    "semask_swin_s_fpn_no_lambda_ade20k": (45.00, None),
    "semask_swin_t_fpn_no_prior_loss_ade20k": (41.72, None),  # Table 5
    "swin_t_fpn_aux_ade20k": (41.52, None),
    "query_swin_t_fpn_ade20k": (40.81, None),
    "mit_b4_ade20k": (48.46, 49.76),  # Table 6 (mmseg's SegFormer-B4)
    "semask_mit_b4_ade20k": (50.01, 51.07),
}


def paper_miou(name: str, cfg: ExperimentConfig | None = None) -> tuple[float, float | None] | None:
    """The paper's mIoU of recipe ``name`` (``cfg``: the recipe, if already loaded), or None: its
    released weights' numbers (``MODEL.DATASET``), else :data:`PAPER_MIOU`."""
    from .models import get_pretrained, list_pretrained

    cfg = cfg or get_recipe(name)
    entry = f"{cfg.model.name}.{cfg.data.type}"
    released = get_pretrained(entry).paper_miou if entry in list_pretrained() else None
    return released or PAPER_MIOU.get(name)


def format_miou(miou: tuple[float, float | None] | None) -> str:
    """``s.s. / m.s.`` as the tables print it (``-`` for what the paper does not give)."""
    if miou is None:
        return "-"
    return f"{miou[0]:.2f} / " + ("-" if miou[1] is None else f"{miou[1]:.2f}")


def recipe_names() -> list[str]:
    """Every packaged recipe by name: the file stem (``semask_swin_t_fpn_ade20k``), sorted.

    Subfolders (``mit/``, ``mask2former/``, ``ablations/``) only group files; names are unique
    across them (a test keeps them so), and ``ablations/NAME`` is accepted too.
    """
    return sorted(p.stem for p in _recipe_files())


def _recipe_files() -> list[Path]:
    return [p for p in RECIPES_DIR.rglob("*.yaml") if "_base_" not in p.relative_to(RECIPES_DIR).parts]


def recipe_path(name: str) -> Path:
    """The packaged YAML file of recipe ``name`` (a file stem, optionally with its subfolder)."""
    stem = name.removesuffix(".yaml")
    matches = [p for p in _recipe_files() if stem in (p.stem, p.relative_to(RECIPES_DIR).with_suffix("").as_posix())]
    if len(matches) == 1:
        return matches[0]
    close = difflib.get_close_matches(stem.rsplit("/", 1)[-1], recipe_names(), n=5, cutoff=0.6)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise ConfigError(f"no config file or packaged recipe named {name!r}{hint} (`semask config` lists them)")


def get_recipe(name: str, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The packaged recipe ``name`` resolved to an :class:`ExperimentConfig` (overrides applied)."""
    return load_config(recipe_path(name), overrides)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML experiment (following ``_base_`` files) and apply ``a.b=value`` overrides.

    ``path`` is a file, or the name of a packaged recipe (:func:`recipe_names`) when no such
    file exists.
    """
    path = Path(path)
    if not path.is_file() and _names_a_recipe(path):
        path = recipe_path(str(path))
    return ExperimentConfig.from_dict(_read_with_bases(path, chain=()), str(path), overrides)


def _names_a_recipe(path: Path) -> bool:
    """Whether a path that is no file could be a packaged recipe's name (``NAME``, ``dir/NAME[.yaml]``)."""
    return path.suffix in ("", ".yaml") and not path.is_absolute()


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``a.b.c=value``; the value is parsed as YAML, so ``1e-4``, ``[64,64]`` and ``null`` work."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"override {item!r}: cannot parse value {text!r} as YAML ({problem})") from None
    return key, value


def dump_config(cfg: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (no ``_base_``), loadable again with :func:`load_config`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"_base_ cycle: {cycle}")
    if not path.is_file():
        where = f" (a _base_ of {chain[-1]})" if chain else ""
        raise ConfigError(f"config file {path} does not exist{where}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file() and _names_a_recipe(Path(base)):
            with contextlib.suppress(ConfigError):  # a packaged recipe by name; else the missing-file error
                base_path = recipe_path(base)
        merged = _merge(merged, _read_with_bases(base_path, (*chain, resolved)))
    return _merge(merged, data)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_nested(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, checking keys and value types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {[prefix + k for k in unknown]}; valid keys under "
            f"{prefix.rstrip('.') or 'the top level'}: {names}"
        )
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        kwargs[name] = _coerce(data[name], hints[name], source, prefix + name)
    try:
        return cls(**kwargs)
    except ValueError as exc:  # cross-field checks in __post_init__
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: {exc}") from None


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source}: {key} must be {expected}, got {value!r} ({type(value).__name__})")

    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key + ".")
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise fail(" or ".join(_describe(a) for a in args))
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's own message names the exact culprit (e.g. a list item)
            return _coerce(value, options[0], source, key)
        for arg in options:
            try:
                return _coerce(value, arg, source, key)
            except ConfigError:
                pass
        raise fail(" or ".join(_describe(a) for a in args))
    if origin is Literal:
        if value not in args:
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-4" (no dot) as a string
                return float(value)
            except ValueError:
                raise fail("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise fail(_describe(tp))
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise fail(_describe(tp))
        return tuple(_coerce(v, a, source, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail(_describe(tp))
        return [_coerce(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail("a mapping")
        return dict(value)
    raise TypeError(f"config annotation {tp!r} of {key} is not supported")


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} " + "/".join(_plural(a) for a in dict.fromkeys(args))
    if origin is list:
        return f"a list of {_plural(args[0])}"
    if origin is dict:
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, _describe(tp))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
