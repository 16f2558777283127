"""The ``sgcl`` node of a solo-learn config: its defaults and checks (needs omegaconf, not solo-learn itself).

:func:`add_sgcl_cfg` is what every SGCL method's ``add_and_assert_specific_cfg`` adds to solo's own; the keys are
documented in docs/adapters/solo.md. :mod:`sgcl_plugin.adapters.solo` re-exports the public names.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, List

from sgcl_plugin.checks import check_int, check_number
from sgcl_plugin.features import check_stride
from sgcl_plugin.region_sources import REGION_SOURCES

__all__ = ["DEFAULT_CROP_SIZE", "INSTALL_HINT", "SGCL_DEFAULTS", "add_sgcl_cfg", "expand_augmentations", "omegaconf",
           "select"]  # fmt: skip

INSTALL_HINT = (
    "sgcl_plugin.adapters.solo needs solo-learn's main branch (1.0.6; hydra configs, `BaseMethod(cfg)`), "
    "which is not on PyPI (PyPI's solo-learn 1.0.2 is from 2021, built for pytorch-lightning 1.4, with "
    "another API). Install it beside sgcl_plugin from a clone, in the environment you train in:\n"
    "    bash examples/solo/install.sh [SOLO_LEARN_DIR]   # from sgcl_plugin's repository; clones when needed\n"
    "(it pins lightning==2.1.2 and torchmetrics<0.12; see docs/adapters/solo.md)."
)

DEFAULT_CROP_SIZE = 96

# Defaults of the ``sgcl`` node of a solo config (docs/adapters/solo.md says what each key does).
SGCL_DEFAULTS: Dict[str, Any] = {
    "num_regions": 4, "crop_size": None, "scale": None, "views": None, "gamma": 0.5, "normalize": "count",
    "exclude_same_image": True, "max_regions": 16, "regions": "hierarchy",
    "inter": {"enabled": None, "queue_size": 4096, "num_neighbors": 5},  # None: on for BYOL and NNCLR, off for SimCLR
    "refresh": {"enabled": True, "feature_stride": "auto", "every_n_epochs": 10, "first_epoch": None,
                "saliency_size": 640, "batch_size": 32, "num_workers": 0, "progress": True},
}  # fmt: skip


def omegaconf() -> Any:
    """omegaconf's ``OmegaConf`` (hydra's, installed with solo-learn)."""
    try:
        return importlib.import_module("omegaconf").OmegaConf
    except ImportError as err:  # pragma: no cover - a dependency of solo-learn (hydra)
        raise ImportError(f"solo-learn configs need omegaconf. {INSTALL_HINT}") from err


def select(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.<key>`` (a dotted key) or ``default`` when it is missing or None."""
    value = omegaconf().select(cfg, key, default=default)
    return default if value is None else value


def _as_int(name: str, value: Any, minimum: int) -> int:
    return check_int(f"sgcl.{name}", value, minimum)


def expand_augmentations(cfg: Any) -> List[Any]:
    """``cfg.augmentations`` with one entry per crop (an entry of ``num_crops: 2`` twice)."""
    return [aug for aug in select(cfg, "augmentations", []) for _ in range(int(select(aug, "num_crops", 1)))]


def _check_keys(user: Dict[str, Any], defaults: Dict[str, Any] = SGCL_DEFAULTS, prefix: str = "sgcl") -> None:
    unknown = sorted(set(user) - set(defaults))
    if unknown:
        raise ValueError(f"Unknown {prefix} key(s) {unknown}; known: {sorted(defaults)}.")
    for key, value in user.items():
        if isinstance(defaults[key], dict) and isinstance(value, dict):
            _check_keys(value, defaults[key], f"{prefix}.{key}")


def add_sgcl_cfg(cfg: Any) -> Any:
    """Fills the ``sgcl`` node of a solo config with defaults, checks it and sets solo's crop counts.

    ``cfg.augmentations`` (if any) must describe two crops of one ``crop_size`` (``sgcl.crop_size`` if set):
    the region pairs are solo's two large crops (``cfg.data.num_large_crops`` 2, ``num_small_crops`` 0).

    Raises:
        ValueError: other crop counts or sizes, solo multicrop, unknown keys or bad ``sgcl`` values.
    """
    OmegaConf = omegaconf()
    OmegaConf.set_struct(cfg, False)
    user = select(cfg, "sgcl", {}) or {}
    _check_keys(OmegaConf.to_container(user, resolve=True) if OmegaConf.is_config(user) else dict(user))
    node = OmegaConf.merge(OmegaConf.create(SGCL_DEFAULTS), user)
    crops = expand_augmentations(cfg)
    sizes = [int(select(aug, "crop_size", -1)) for aug in crops]
    if crops and len(crops) != 2:
        raise ValueError(
            f"SGCL makes exactly two views of each region, but cfg.augmentations describes {len(crops)} crops "
            f"(sizes {sizes}). Use two pipelines with num_crops: 1 (view 1, view 2) or one with num_crops: 2."
        )
    if crops and len(set(sizes)) != 1:
        raise ValueError(
            f"SGCL region crops all have one size, but cfg.augmentations has crop sizes {sizes}. solo calls a crop "
            "'large' only when its size equals the first pipeline's, so the other region crops would become 'small' "
            "crops and silently lose their momentum targets. Give every pipeline the same crop_size (e.g. 96)."
        )
    explicit = node.crop_size
    if explicit is not None and crops and int(explicit) != sizes[0]:
        raise ValueError(
            f"sgcl.crop_size = {explicit} but the augmentations crop to {sizes[0]} px: set both to the same size "
            "(the region crops are solo's large crops)."
        )
    default_size = sizes[0] if crops else DEFAULT_CROP_SIZE
    node.crop_size = _as_int("crop_size", int(explicit) if explicit is not None else default_size, 2)
    _as_int("num_regions", node.num_regions, 1)
    _as_int("max_regions", node.max_regions, 1)
    if node.scale is None:  # the first augmentation's rrc scale range, else [0.08, 1.0]
        default = {"min": 0.08, "max": 1.0}
        node.scale = [float(select(crops[0], f"rrc.crop_{k}_scale", v) if crops else v) for k, v in default.items()]
    if node.views is None:
        node.views = "solo" if crops else "byol"
    views, gamma, normalize, regions = node.views, node.gamma, node.normalize, node.regions
    checks = (  # (valid, error message), in order
        (views in ("solo", "byol"),
            f"sgcl.views must be 'solo' (the config's augmentations) or 'byol', got {views!r}."),
        (views != "solo" or crops,
            "sgcl.views = 'solo' needs cfg.augmentations (two pipelines); use views: byol otherwise."),
        (normalize in ("count", "weight"), f"sgcl.normalize must be 'count' or 'weight', got {normalize!r}."),
        (regions in REGION_SOURCES, f"sgcl.regions must be one of {', '.join(REGION_SOURCES)}, got {regions!r}."),
    )  # fmt: skip
    for valid, message in checks:
        if not valid:
            raise ValueError(message)
    check_number("sgcl.gamma", gamma, 0)
    inter, refresh = node.inter.enabled is not False, bool(node.refresh.enabled)  # inter None: the method's default
    stride = node.refresh.feature_stride
    check_stride(list(stride) if OmegaConf.is_list(stride) else stride, "sgcl.refresh.feature_stride")
    for key, minimum, active in (  # integer keys checked when in use: (key, minimum or the key holding it, in use)
        ("inter.num_neighbors", 1, inter),
        ("inter.queue_size", "inter.num_neighbors", inter),
        ("refresh.every_n_epochs", 1, refresh),
        ("refresh.saliency_size", 2, refresh),
    ):
        if active:
            low = minimum if isinstance(minimum, int) else int(OmegaConf.select(node, minimum))
            _as_int(key, OmegaConf.select(node, key), low)
    cfg.sgcl = node
    if select(cfg, "data", None) is None:
        cfg.data = {}
    large, small = select(cfg, "data.num_large_crops", 2), select(cfg, "data.num_small_crops", 0)
    if (large, small) != (2, 0):
        raise ValueError(
            f"SGCL methods take the two views of each region pair as solo's two large crops (num_large_crops=2, "
            f"num_small_crops=0); the config says num_large_crops={large}, num_small_crops={small}. solo multicrop "
            "(small crops) is not supported: more region pairs per image come from sgcl.num_regions."
        )
    cfg.data.num_large_crops, cfg.data.num_small_crops = 2, 0
    return cfg
