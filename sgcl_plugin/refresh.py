"""Saliency refresh of a whole dataset: batched, shown with a progress bar, sharded across ranks."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sgcl_plugin.bank import SaliencyBank, banks_read_by_crops
from sgcl_plugin.checks import check_int
from sgcl_plugin.distributed import comm_device
from sgcl_plugin.features import check_feature_output, default_device, eval_mode
from sgcl_plugin.images import SaliencyInput
from sgcl_plugin.items import DatasetImages

__all__ = ["MIN_GRID_CELLS", "check_dataset_bank", "refresh_bank"]

if TYPE_CHECKING:
    from sgcl_plugin.saliency import SaliencyGenerator

MIN_GRID_CELLS = 64
"""A refresh warns once when the feature grid has fewer cells than this (e.g. 224 px at stride 32: 7 x 7)."""


class _Indexed(Dataset):
    def __init__(self, dataset: Any, indices: Sequence[int], transform: Callable[[Any], Tensor]) -> None:
        self.dataset, self.indices, self.transform = dataset, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Tuple[int, Tensor]:
        index = int(self.indices[i])
        return index, self.transform(self.dataset[index])


def _shard(n: int, rank: int, world: int) -> List[int]:
    return list(range(rank, n, world))


def check_dataset_bank(dataset: Any, bank: Optional[SaliencyBank]) -> None:
    """Refuses a ``bank`` that is not the one a crop dataset's transform reads (``dataset.bank``: a
    :class:`~sgcl_plugin.bank_crops.SaliencyCropDataset`, lightly's or solo's ``SGCLDataset``): regions written there
    would reach no crop and training would go on with the old ones. Nothing to check for a plain dataset, a crop
    dataset without a crop step yet, or no bank.

    Raises:
        ValueError: naming the fix (``bank=dataset.bank``).
    """
    own = getattr(dataset, "bank", None)
    if bank is None or not isinstance(own, SaliencyBank) or own is bank:
        return
    reader = type(getattr(dataset, "transform", None)).__name__
    raise ValueError(
        f"This bank is not the one the dataset's {reader} reads (dataset.bank): the refresh would never reach the "
        "crops, and training would go on with the old regions. Refresh the dataset's own bank: bank=dataset.bank."
    )


def refresh_bank(
    generator: SaliencyGenerator,
    model: Union[torch.nn.Module, Callable[[Tensor], Tensor]],
    dataset: Any,
    bank: Optional[SaliencyBank] = None,
    batch_size: int = 32,
    saliency_size: int = 640,
    transform: Optional[Callable[[Any], Tensor]] = None,
    device: Optional[Union[str, torch.device]] = None,
    num_workers: int = 0,
    max_regions: int = 16,
    progress: bool = True,
    distributed: Optional[bool] = None,
) -> SaliencyBank:
    """Runs ``model`` over ``dataset`` and writes every image's regions into ``bank``.

    Each image goes through ``transform`` (default: resize to ``saliency_size`` squared and
    ImageNet normalization), batches go through ``model`` under ``torch.no_grad()`` in eval mode
    (each submodule's previous mode is restored afterwards), and ``generator`` turns the feature
    maps into regions. Boxes are relative to the whole image, so they hold for the original image
    whatever its size.

    Under ``torch.distributed`` (initialized, and ``distributed`` not False) rank r takes indices
    r, r + world, ...; results are padded to ``bank.max_regions`` and all-gathered **with their
    dataset indices**, so every rank ends with the identical, complete bank whatever the sampler
    order or the dataset size.

    Args:
        generator: The :class:`~sgcl_plugin.saliency.SaliencyGenerator` to use.
        model: A module or callable mapping a (B, 3, S, S) batch to feature maps (B, C, h, w), or to
            a pair ``(fine, coarse)`` of them (``FeatureMaps(backbone, stride=(16, 32))``).
        dataset: Indexable dataset of images (PIL, arrays, tensors; or tuples/dicts holding one); a crop
            dataset (:class:`~sgcl_plugin.bank_crops.SaliencyCropDataset`) is read through its images.
        bank: The bank to fill; a new one with ``max_regions`` is made when omitted. For a crop dataset it must
            be the dataset's own (``dataset.bank``).
        batch_size: Images per forward pass.
        saliency_size: Side of the square input (paper: 640).
        transform: Replaces the default resize + normalization.
        device: Where the model runs; default: the device of its first parameter.
        num_workers: DataLoader workers that load and resize images.
        max_regions: Regions per image in a new bank.
        progress: Show a tqdm progress bar (rank 0 only).
        distributed: Force (True) or disable (False) sharding; default: when initialized.

    Returns:
        The filled bank (``bank`` itself when given).

    Raises:
        ValueError: an empty dataset, a bank of another size, a crop dataset whose bank is not ``bank``.
    """
    check_dataset_bank(dataset, bank)
    dataset = DatasetImages(dataset)  # one item parser; a crop dataset gives the images it wraps
    n = len(dataset)
    if n == 0:
        raise ValueError("Cannot refresh saliency over an empty dataset.")
    check_int("batch_size", batch_size, 1)
    if bank is None:
        if banks_read_by_crops(n):
            warnings.warn(
                f"refresh without bank= fills a new SaliencyBank, but a SaliencyCropTransform reads another bank of "
                f"these {n} images: the new regions would reach no crop (training would go on with the old ones). "
                "Pass that bank: refresh_bank(generator, model, images, bank=transform.bank).",
                UserWarning,
                stacklevel=2,
            )
        bank = SaliencyBank(n, max_regions=max_regions)
    elif len(bank) != n:
        raise ValueError(f"The bank holds {len(bank)} images but the dataset has {n}.")
    if transform is None:
        check_int("saliency_size", saliency_size, 2)
        transform = SaliencyInput(saliency_size)

    use_dist = dist.is_available() and dist.is_initialized() if distributed is None else distributed
    if use_dist and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed=True but torch.distributed is not initialized.")
    rank, world = (dist.get_rank(), dist.get_world_size()) if use_dist else (0, 1)
    device = torch.device(device) if device is not None else default_device(model)

    indices = _shard(n, rank, world)
    loader = DataLoader(
        _Indexed(dataset, indices, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",  # with non_blocking copies below: transfers overlap the forward
    )
    R = bank.max_regions
    local_idx, local_boxes, local_scores, local_counts, local_fb = [], [], [], [], []
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="SGCL saliency refresh", unit="img", dynamic_ncols=True)
    warned = False
    with torch.no_grad(), eval_mode(model):
        for idx, images in loader:
            x = images.to(device, non_blocking=True)
            features = model(x)
            pair = isinstance(features, (tuple, list)) and len(features) == 2
            if not (isinstance(features, Tensor) or (pair and all(isinstance(m, Tensor) for m in features))):
                raise TypeError(
                    f"The model returned a {type(features).__name__}; refresh needs a feature map tensor "
                    "(B, C, h, w), or a pair (fine, coarse) of them. Wrap the backbone to return its last feature map."
                )
            check_feature_output(features, x)
            first = features[0] if pair else features
            if not warned and first.shape[-2] * first.shape[-1] < MIN_GRID_CELLS:
                warned = True
                h, w = first.shape[-2:]
                side = x.shape[-1]
                better = int(math.ceil(side * math.sqrt(MIN_GRID_CELLS / (h * w)) / 32) * 32)
                warnings.warn(
                    f"The saliency feature grid is only {h} x {w} cells (input {side} px): regions this coarse are "
                    f"often one region for the whole image. Use saliency_size >= {better} (the paper: 640 with "
                    "ResNet-50, a 20 x 20 grid) or a finer stage (FeatureMaps(backbone, stride=16)).",
                    stacklevel=2,
                )
            result = generator(features)
            boxes, scores, counts = result.padded(R)
            local_idx.append(idx)
            local_boxes.append(boxes)
            local_scores.append(scores)
            local_counts.append(counts)
            local_fb.append(torch.tensor([r.fallback for r in result.regions]))
            if bar is not None:
                bar.update(len(idx) * world)
                bar.set_postfix(regions=f"{float(counts.float().mean()):.2f}/img")
    if bar is not None:
        bar.close()

    idx = torch.cat(local_idx) if local_idx else torch.zeros(0, dtype=torch.int64)
    boxes = torch.cat(local_boxes) if local_boxes else torch.zeros(0, R, 4)
    scores = torch.cat(local_scores) if local_scores else torch.zeros(0, R)
    counts = torch.cat(local_counts) if local_counts else torch.zeros(0, dtype=torch.int64)
    fb = torch.cat(local_fb) if local_fb else torch.zeros(0, dtype=torch.bool)
    if use_dist:
        comm = comm_device(str(dist.get_backend()), device)
        idx, boxes, scores, counts, fb = _gather_by_index(idx, boxes, scores, counts, fb, n, world, comm)
    bank.write(boxes, scores, counts, fb, index=idx)
    bank.mark_refreshed()
    return bank


def _gather_by_index(
    idx: Tensor,
    boxes: Tensor,
    scores: Tensor,
    counts: Tensor,
    fb: Tensor,
    n: int,
    world: int,
    comm: Optional[torch.device] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """All-gathers the shards of every rank, padded to equal length; drops the padding (index -1)."""
    per_rank = math.ceil(n / world)
    pad = per_rank - idx.numel()
    R = boxes.shape[1]
    # One float table per rank: [index, count, fallback, scores (R), boxes (4R)]; indices < 2^24 are
    # exact in float32, and float64 is used beyond that.
    dtype = torch.float32 if n < 2**24 else torch.float64
    table = torch.cat(
        [
            idx[:, None].to(dtype),
            counts[:, None].to(dtype),
            fb[:, None].to(dtype),
            scores.to(dtype),
            boxes.flatten(1).to(dtype),
        ],
        dim=1,
    )
    table = torch.cat([table, torch.full((pad, table.shape[1]), -1.0, dtype=dtype)]).to(comm or "cpu")
    gathered = [torch.empty_like(table) for _ in range(world)]
    dist.all_gather(gathered, table)
    full = torch.cat(gathered).cpu()
    full = full[full[:, 0] >= 0]
    if full.shape[0] != n or torch.unique(full[:, 0]).numel() != n:
        raise RuntimeError(f"Distributed refresh gathered {full.shape[0]} rows for a dataset of {n} images.")
    return (
        full[:, 0].long(),
        full[:, 3 + R :].reshape(-1, R, 4).float(),
        full[:, 3 : 3 + R].float(),
        full[:, 1].long(),
        full[:, 2] > 0.5,
    )
