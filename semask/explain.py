"""See what SeMask sees: the per-stage semantic-prior maps of one image.

Every SeMask stage ends with a semantic layer whose last semantic block projects the
features to K class scores per pixel, S_Q (spec semask_fpn.md section 3). Those maps are
the stage's *semantic prior*: the semantic decoder sums them into the semantic prediction
that the prior loss supervises, and the semantic attention uses them to group pixels.
:func:`explain` runs the model once, catches the priors with forward hooks on the semantic
layers (the model code is unchanged), and returns an :class:`Explanation` with

* per stage: the raw S_Q map (K, h_i, w_i) and its argmax as a class-id picture;
* per selected class (named ones, or the ``top_k`` most frequent in the prediction): the
  stage heatmaps, i.e. the softmax over classes of S_Q, bilinearly upsampled to the image
  (the probabilities are upsampled, so the maps of all K classes still sum to 1);
* the decoded semantic prediction (argmax of the semantic decoder's logits), the final
  prediction (argmax of the main logits), and a *disagreement map*:
  ``[semantic argmax != final argmax] * p_semantic_max * p_final_max``, high where two
  confident predictions disagree, zero where they agree.

:meth:`Explanation.save` writes one composite PNG and the raw arrays as ``.npz``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .data.visualize import save_png
from .engine.health import semantic_lambdas, semantic_layers
from .engine.inference import UnsegmentableImageError, image_error, out_of_memory_is_unsegmentable
from .engine.predict import FROM_MODEL, load_rgb, model_protocol
from .models.io import atomic_write

__all__ = ["Explanation", "NoSemanticLayersError", "explain", "prior_heatmaps"]


class NoSemanticLayersError(ValueError):
    """The model has no semantic layers (a baseline), so it has no prior maps to show."""


@dataclass
class Explanation:
    """What :func:`explain` found for one image; arrays are numpy, at the image size unless noted.

    ``priors[i]``: raw S_Q of stage ``stages[i]`` (K, h_i, w_i) float32 at the stage's
    resolution; ``prior_ids[i]``: its argmax (h_i, w_i). ``heatmaps``: (classes, stages, H, W)
    class probabilities of the priors, for ``classes`` (ids). ``semantic``/``prediction``:
    (H, W) class ids of the semantic decoder and of the model; ``confidence`` and
    ``semantic_confidence`` their softmax maxima; ``disagreement`` (H, W) in [0, 1].
    """

    image: np.ndarray
    class_names: list[str]
    palette: list[list[int]]
    stages: list[int]
    priors: list[np.ndarray]
    prior_ids: list[np.ndarray]
    classes: list[int]
    heatmaps: np.ndarray
    semantic: np.ndarray
    semantic_confidence: np.ndarray
    prediction: np.ndarray
    confidence: np.ndarray
    disagreement: np.ndarray
    lambdas: dict[str, float] = field(default_factory=dict)

    def shares(self) -> dict[str, float]:
        """Fraction of the image's pixels per predicted class (classes present only)."""
        ids, counts = np.unique(self.prediction, return_counts=True)
        total = self.prediction.size
        return {self.class_names[int(i)]: float(c) / total for i, c in zip(ids, counts)}

    def arrays(self) -> dict[str, np.ndarray]:
        """The raw arrays as written to the ``.npz`` file."""
        out: dict[str, np.ndarray] = {
            "image": self.image,
            "stages": np.asarray(self.stages, np.int64),
            "classes": np.asarray(self.classes, np.int64),
            "class_names": np.asarray(self.class_names),
            "heatmaps": self.heatmaps,
            "semantic": self.semantic,
            "semantic_confidence": self.semantic_confidence,
            "prediction": self.prediction,
            "confidence": self.confidence,
            "disagreement": self.disagreement,
            "lambda_names": np.asarray(list(self.lambdas)),
            "lambda_values": np.asarray(list(self.lambdas.values()), np.float64),
        }
        for stage, prior, ids in zip(self.stages, self.priors, self.prior_ids):
            out[f"prior_stage{stage}"] = prior
            out[f"prior_ids_stage{stage}"] = ids
        return out

    def figure(self) -> Any:
        """The composite as a matplotlib figure (Agg backend)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch

        from .data.visualize import colorize, overlay

        n = len(self.stages)
        cols = max(n, 4) + 1
        rows = 2 + len(self.classes)
        fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()
        h, w = self.prediction.shape

        def show(ax: Any, picture: np.ndarray, title: str, **kwargs: Any) -> Any:
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            shown = ax.imshow(picture, interpolation="nearest", **kwargs)
            ax.set_title(title, fontsize=9)
            return shown

        show(axes[0, 0], self.image, "image")
        show(axes[0, 1], overlay(self.image, self.prediction, self.palette, 0.6), "final prediction")
        show(axes[0, 2], overlay(self.image, self.semantic, self.palette, 0.6), "semantic (prior) prediction")
        agree = float((self.semantic == self.prediction).mean()) * 100
        im = show(axes[0, 3], self.disagreement, f"disagreement ({agree:.0f}% agree)", cmap="magma", vmin=0, vmax=1)
        fig.colorbar(im, ax=axes[0, 3], fraction=0.046, pad=0.02)
        present = sorted(
            set(np.unique(self.prediction).tolist())
            | set(np.unique(self.semantic).tolist())
            | {int(c) for ids in self.prior_ids for c in np.unique(ids)}
        )
        shares = self.shares()
        handles = [
            Patch(
                color=np.asarray(self.palette[c]) / 255.0,
                label=f"{self.class_names[c]} {100 * shares.get(self.class_names[c], 0.0):.0f}%",
            )
            for c in present[:20]
        ]
        axes[0, cols - 1].legend(handles=handles, loc="center", fontsize=8, title="class (share)", frameon=False)
        for j, (stage, ids) in enumerate(zip(self.stages, self.prior_ids)):
            big = np.asarray(Image.fromarray(ids.astype(np.uint8)).resize((w, h), Image.NEAREST))
            lam = self.lambdas.get(f"stage{stage}")
            title = f"stage {stage} prior argmax" + ("" if lam is None else f"\nlambda={lam:.3f}")
            show(axes[1, j], colorize(big, self.palette), title)
        text = (
            "row 2: argmax of each stage's S_Q\n"
            "rows 3+: softmax over classes of S_Q,\n  upsampled to the image (0..1)\n"
            "disagreement = [semantic != final]\n  x p_semantic x p_final\n\n"
            + "\n".join(f"{k}: lambda={v:.4f}" for k, v in self.lambdas.items())
        )
        axes[1, cols - 1].text(0.0, 0.5, text, fontsize=8, va="center")
        for r, c in enumerate(self.classes, start=2):
            name = self.class_names[c]
            for j, stage in enumerate(self.stages):
                show(
                    axes[r, j], self.heatmaps[r - 2, j], f"{name}: stage {stage} prior", cmap="viridis", vmin=0, vmax=1
                )
            final = (self.prediction == c).astype(np.float32)
            show(axes[r, cols - 1], final, f"{name}: final mask", cmap="gray", vmin=0, vmax=1)
        fig.suptitle("SeMask semantic-prior maps (S_Q of the last semantic block per stage)", fontsize=11)
        fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.3 / rows, wspace=0.15, hspace=0.35)
        return fig

    def save(self, out_dir: str | os.PathLike[str], name: str = "explain") -> dict[str, Path]:
        """Write ``NAME.png`` (composite) and ``NAME.npz`` (arrays) into ``out_dir`` atomically."""
        import matplotlib.pyplot as plt

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        png, npz = out_dir / f"{name}.png", out_dir / f"{name}.npz"
        fig = self.figure()
        try:
            atomic_write(png, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
        finally:
            plt.close(fig)
        arrays = self.arrays()

        def write_npz(tmp: str) -> None:
            with open(tmp, "wb") as handle:  # a handle: given a name, numpy would append ".npz"
                np.savez_compressed(handle, **arrays)

        atomic_write(npz, write_npz)
        return {"composite": png, "arrays": npz}

    def save_heatmaps(self, out_dir: str | os.PathLike[str], name: str) -> list[Path]:
        """Per class and stage, the heatmap as a colour PNG ``NAME_CLASS_stageI.png``."""
        import matplotlib

        cmap = matplotlib.colormaps["viridis"]
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for r, c in enumerate(self.classes):
            label = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in self.class_names[c])
            for j, stage in enumerate(self.stages):
                rgb = (cmap(np.clip(self.heatmaps[r, j], 0, 1))[..., :3] * 255 + 0.5).astype(np.uint8)
                written.append(save_png(out_dir / f"{name}_{label}_stage{stage}.png", rgb))
        return written


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _prior_to_image(
    prior: Tensor, input_size: tuple[int, int], padded: tuple[int, int], out: tuple[int, int]
) -> Tensor:
    """A (1, K, h, w) prior of a (possibly padded) input -> (1, K, *out) over the image."""
    h, w = input_size
    if padded != input_size:  # the model padded its input: the prior covers the padded canvas
        prior = _resize(prior, padded)[..., :h, :w]
    return _resize(prior, out)


def prior_heatmaps(
    prior: Tensor,
    classes: Sequence[int],
    input_size: tuple[int, int],
    padded: tuple[int, int],
    size: tuple[int, int],
) -> Tensor:
    """(1, K, h, w) raw S_Q -> (len(classes), *size): softmax over the K classes at the stage's
    resolution, then the chosen classes' maps bilinearly upsampled to the image (only those:
    upsampling all K maps of a 150-class model to the image would cost far more)."""
    probs = prior.float().softmax(dim=1)[:, list(classes)]
    return _prior_to_image(probs, input_size, padded, size)[0]


def _model_label(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return f"{type(model).__name__} ({type(config).__name__ if config is not None else 'no config'})"


def _resolve_classes(
    classes: Sequence[int | str] | str | None, names: list[str], prediction: np.ndarray, top_k: int
) -> list[int]:
    if classes is None:
        ids, counts = np.unique(prediction, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        return [int(ids[i]) for i in order[: max(top_k, 0)]]
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    lookup = {name.lower(): i for i, name in enumerate(names)}
    out = []
    for c in classes:
        if isinstance(c, str) and c.strip().isdigit():
            c = int(c)
        if isinstance(c, (int, np.integer)):
            if not 0 <= int(c) < len(names):
                raise ValueError(
                    f"class id {c} is out of range: the model has {len(names)} classes (0..{len(names) - 1})"
                )
            out.append(int(c))
        elif str(c).lower() in lookup:
            out.append(lookup[str(c).lower()])
        else:
            shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
            raise ValueError(f"unknown class {c!r}; the model's classes are: {shown}")
    return list(dict.fromkeys(out))


@torch.inference_mode()
def explain(
    model: nn.Module,
    image: str | os.PathLike[str] | Image.Image | np.ndarray,
    classes: Sequence[int | str] | str | None = None,
    top_k: int = 3,
    *,
    scale: tuple[int, int] | None = FROM_MODEL,
) -> Explanation:
    """Run ``model`` on ``image`` once and collect its semantic-prior maps (module docstring).

    ``classes``: class names or ids (or ``"boat,car"``) to draw heatmaps for; ``None`` takes
    the ``top_k`` classes covering most pixels of the prediction. ``scale`` = (long, short)
    resizes the image first with the family's test resize, as :func:`semask.predict` does (default:
    the scale of the model's test protocol; one whole-image pass, whatever the protocol's mode). Raises
    :class:`NoSemanticLayersError` for models without semantic layers (the baselines).
    """
    from .data.pipelines import pipeline_for
    from .data.transforms import normalize
    from .engine.inference import _model_device

    layers = semantic_layers(model)
    label = _model_label(model)
    if not layers:
        raise NoSemanticLayersError(
            f"{label} has no semantic layers (a baseline such as swin_t_fpn or mit_b0), so it has no "
            "semantic-prior maps to explain; use a SeMask preset (semask_*)"
        )
    config = model.config  # type: ignore[union-attr]
    scale = model_protocol(model, scale=scale).scale
    rgb = load_rgb(image)
    model.eval()
    resized = next(pipeline_for(config).test_views(rgb, scale))  # as predict does
    x = torch.from_numpy(normalize(resized, config.mean, config.std))
    x = x[None].to(_model_device(model))
    input_size = (x.shape[-2], x.shape[-1])
    padded = input_size
    from .models.mask2former.model import SIZE_DIVISIBILITY, SeMaskMaskFormer

    if isinstance(model, SeMaskMaskFormer):
        padded = (
            -(-input_size[0] // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY,
            -(-input_size[1] // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY,
        )

    caught: dict[int, Tensor] = {}

    def hook_for(stage: int) -> Any:
        def hook(module: nn.Module, args: Any, output: tuple[Tensor, Tensor | None]) -> None:
            if output[1] is not None:
                caught[stage] = output[1].detach().float()

        return hook

    handles = [layer.register_forward_hook(hook_for(stage)) for stage, layer in layers]
    try:
        with out_of_memory_is_unsegmentable():
            out = model(x, output_semantic_logits=True)
    except UnsegmentableImageError as exc:  # e.g. a 10x20000 strip too thin for the encoder: say which image
        source = image if isinstance(image, (str, os.PathLike)) else "the image"
        raise UnsegmentableImageError(image_error(source, rgb, exc)) from exc
    finally:
        for handle in handles:
            handle.remove()
    if not caught:
        raise NoSemanticLayersError(
            f"{label} has semantic layers but they make no prior maps (the self-attention ablation, "
            "semantic_attention='self'); there is nothing to explain"
        )
    size = (rgb.shape[0], rgb.shape[1])
    logits = _resize(out.logits.float(), input_size)
    logits = _resize(logits, size)
    probs = model.probabilities(logits)  # softmax, or a mask-classification model's class x mask scores
    probs = probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)  # scores need not sum to 1
    confidence, prediction = probs.max(dim=1)
    semantic_logits = _resize(_resize(out.semantic_logits.float(), input_size), size)
    semantic_confidence, semantic = semantic_logits.softmax(dim=1).max(dim=1)
    disagreement = (semantic != prediction).float() * semantic_confidence * confidence

    names = config.names()
    palette = config.colours()
    prediction_np = prediction[0].cpu().numpy().astype(np.int64)
    chosen = _resolve_classes(classes, names, prediction_np, top_k)
    stages = sorted(caught)
    heatmaps = np.zeros((len(chosen), len(stages), *size), np.float32)
    if chosen:
        for j, s in enumerate(stages):
            heatmaps[:, j] = prior_heatmaps(caught[s], chosen, input_size, padded, size).cpu().numpy()
    priors = [caught[s][0].cpu().numpy().astype(np.float32) for s in stages]
    return Explanation(
        image=rgb,
        class_names=names,
        palette=palette,
        stages=stages,
        priors=priors,
        prior_ids=[p.argmax(axis=0).astype(np.int64) for p in priors],
        classes=chosen,
        heatmaps=heatmaps,
        semantic=semantic[0].cpu().numpy().astype(np.int64),
        semantic_confidence=semantic_confidence[0].cpu().numpy().astype(np.float32),
        prediction=prediction_np,
        confidence=confidence[0].cpu().numpy().astype(np.float32),
        disagreement=disagreement[0].cpu().numpy().astype(np.float32),
        lambdas=semantic_lambdas(model),
    )
