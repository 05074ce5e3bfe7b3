"""Weights by name: fetch a registered file into the cache and hand it to the one loader.

Importing this package installs :func:`fetch` as the resolver of :mod:`semask.models.pretrained`
(and :func:`loaded` as what runs once a file has loaded), so ``semask.load("semask_swin_t_fpn.ade20k")``
and ``create_model(..., pretrained="ade20k")`` download once, verify and load. Plain URLs and Google Drive need nothing beyond the standard
library (:mod:`.download`); Hugging Face repos go through ``huggingface_hub`` (extra ``[hf]``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..models.pretrained import PretrainedCfg, get_pretrained, set_weights_resolver
from .download import (
    DownloadError,
    default_cache_dir,
    download_file,
    download_gdrive,
    is_offline,
    record_hash,
    sha256_of,
)

HF_ENDPOINT_ENV = "SEMASK_HF_ENDPOINT"  # another Hugging Face endpoint (a mirror, or a test server)


def fetch(cfg: PretrainedCfg, cache_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> Path:
    """The local file (or, for a Hugging Face model, folder) of ``cfg``, downloaded first if needed."""
    if cfg.url:
        return download_file(cfg.url, cfg.cache_name, sha256=cfg.sha256, cache_dir=cache_dir, progress=progress)
    if cfg.gdrive_id:
        return download_gdrive(cfg.gdrive_id, cfg.cache_name, sha256=cfg.sha256, cache_dir=cache_dir, progress=progress)
    return _fetch_hf(cfg, cache_dir, progress)


def loaded(cfg: PretrainedCfg, path: Path) -> None:
    """``path`` (from :func:`fetch`) has just loaded: record its hash for later loads, unless the
    registry knows it (then it is checked every time) or it lives in Hugging Face's own cache."""
    if cfg.sha256 is None and (cfg.url or cfg.gdrive_id):
        record_hash(path)


def _fetch_hf(cfg: PretrainedCfg, cache_dir: str | os.PathLike[str] | None, progress: bool) -> Path:
    """A model repo's weights (and ``config.json`` for full models, which holds the heads) via huggingface_hub."""
    assert cfg.hf_repo is not None
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    files = [cfg.file_name] + (["config.json"] if cfg.kind == "model" else [])
    local = folder / cfg.name  # a copy placed by hand (offline machines) is used as it is
    if all((local / f).is_file() for f in files):
        return _hf_result(cfg, local)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DownloadError(
            f"{cfg.name} lives in the Hugging Face repo {cfg.hf_repo}: pip install 'semask[hf]' (huggingface_hub), "
            f"or download {', '.join(files)} from https://huggingface.co/{cfg.hf_repo} into {local}"
        ) from None
    paths = []
    for name in files:
        try:
            paths.append(
                Path(
                    hf_hub_download(
                        cfg.hf_repo,
                        name,
                        endpoint=os.environ.get(HF_ENDPOINT_ENV),
                        local_files_only=is_offline(),
                    )
                )
            )
        except Exception as err:  # huggingface_hub raises many types (offline, 404, network)
            raise DownloadError(
                f"cannot get {name} of {cfg.hf_repo} ({type(err).__name__}: {str(err).splitlines()[0]}); "
                f"download it from https://huggingface.co/{cfg.hf_repo} into {local}"
            ) from None
    if cfg.sha256 is not None and sha256_of(paths[0]) != cfg.sha256:
        raise DownloadError(f"sha256 mismatch for {paths[0]}: expected {cfg.sha256}, got {sha256_of(paths[0])}")
    return _hf_result(cfg, paths[0].parent)


def _hf_result(cfg: PretrainedCfg, folder: Path) -> Path:
    return folder if cfg.kind == "model" else folder / cfg.file_name


def download(name: str, to: str | os.PathLike[str] | None = None, progress: bool = True) -> Path:
    """Fetch registered weights ``preset.tag`` into the cache (or the folder ``to``); returns the path."""
    return fetch(get_pretrained(name), cache_dir=to, progress=progress)


set_weights_resolver(fetch, loaded)

__all__ = ["DownloadError", "download", "fetch"]
