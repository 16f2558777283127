"""BYOL written the way lightly's own PyTorch example is, with SGCL added: every SGCL line ends in `# SGCL`.

    python examples/lightly_byol.py                  # composed scenes (Fashion-MNIST objects on real textures)
    python examples/lightly_byol.py --data photos/   # any folder of images, read by lightly's LightlyDataset
    python examples/lightly_byol.py --smoke          # 16 images, 2 epochs, a refresh at epoch 1 (< 1 min on a CPU)

docs/adapters/lightly.md shows this loop as a diff against the plain lightly BYOL loop.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any, Dict, Optional, Sequence

import torch
import torchvision
from lightly.data import LightlyDataset
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from sgcl_plugin import SaliencyBank, SaliencyGenerator  # SGCL
from sgcl_plugin.adapters.lightly import (  # SGCL
    SGCLDataset,
    SGCLLoss,
    SGCLRefresher,
    SGCLTransform,
    inter_loss_for,
    sgcl_collate,
)


class BYOL(nn.Module):
    def __init__(self, backbone: nn.Module, hidden_dim: int = 1024, out_dim: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(512, hidden_dim, out_dim)
        self.prediction_head = BYOLPredictionHead(out_dim, hidden_dim, out_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone(x).flatten(start_dim=1)
        return self.prediction_head(self.projection_head(y))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone_momentum(x).flatten(start_dim=1)
        return self.projection_head_momentum(y).detach()


class ComposedSceneImages(torch.utils.data.Dataset):
    """sgcl_plugin's composed scenes as torchvision-style (image, target) pairs, generated once."""

    def __init__(self, num_images: int, image_size: int, seed: int = 0) -> None:
        from sgcl_plugin.testbed.scenes import ComposedScenes

        scenes = ComposedScenes(num_images, image_size=image_size, seed=seed, split="train")
        self.images = [scenes.get_image(i) for i in range(num_images)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Any:
        return self.images[index], 0


SMOKE = dict(
    num_images=16, image_size=96, crop_size=32, num_regions=2, epochs=2, batch_size=8, refresh_every=1,
    saliency_size=128, hidden_dim=64, out_dim=32, queue_size=64, workers=0,
)  # fmt: skip


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="composed", help="'composed' (default) or a folder of images")
    p.add_argument("--num-images", type=int, default=512, help="composed scenes to generate")
    p.add_argument("--image-size", type=int, default=160, help="composed scene side in pixels")
    p.add_argument("--crop-size", type=int, default=64, help="SGCL region crop size (paper: 96)")
    p.add_argument("--num-regions", type=int, default=4, help="t: region pairs per image")
    p.add_argument("--refresh-every", type=int, default=2, help="epochs between saliency refreshes")
    p.add_argument("--saliency-size", type=int, default=256, help="refresh input size (paper: 640)")
    p.add_argument("--min-area", type=int, default=2, help="smallest region in feature-map cells")
    p.add_argument("--gamma", type=float, default=0.5, help="pair weight P^gamma")
    p.add_argument("--queue-size", type=int, default=1024, help="inter-image loss queue")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="images per step (each gives t pairs)")
    p.add_argument("--lr", type=float, default=0.06)
    p.add_argument("--hidden-dim", type=int, default=1024)
    p.add_argument("--out-dim", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny data, 2 epochs, refresh at epoch 1")
    args = p.parse_args(argv)
    if args.smoke:
        p.set_defaults(**SMOKE)
        args = p.parse_args(argv)
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    resnet = torchvision.models.resnet18()
    backbone = nn.Sequential(*list(resnet.children())[:-1])
    model = BYOL(backbone, args.hidden_dim, args.out_dim).to(device)

    if args.data == "composed":
        dataset = LightlyDataset.from_torch_dataset(ComposedSceneImages(args.num_images, args.image_size, args.seed))
    else:
        dataset = LightlyDataset(args.data)  # no transform: SGCLTransform makes the views

    bank = SaliencyBank(len(dataset))  # SGCL: the regions of every image (empty: plain random crops)
    transform = SGCLTransform(bank, num_regions=args.num_regions, size=args.crop_size)  # SGCL: not BYOLTransform
    dataset = SGCLDataset(dataset, transform)  # SGCL: gives the transform the dataset index
    dataloader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        collate_fn=sgcl_collate,  # SGCL: one row per view pair
    )

    criterion = SGCLLoss(NegativeCosineSimilarity(), gamma=args.gamma)  # SGCL: lightly's loss, weighted by P^gamma
    inter = inter_loss_for(model, queue_size=args.queue_size, gamma=args.gamma).to(device)  # SGCL: Eq. 10
    generator = SaliencyGenerator(min_area=args.min_area)  # SGCL: normalized-cut saliency
    # SGCL: regions from the backbone's last map and its stride-16 stage (layer4 and layer3), before its pooling
    refresher = SGCLRefresher(bank, dataset, args.refresh_every, generator, saliency_size=args.saliency_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)

    losses = []
    print("Starting Training")
    for epoch in range(args.epochs):
        refresher.maybe_refresh(epoch, model.backbone)  # SGCL: new regions from the current backbone
        total_loss = 0.0
        momentum_val = cosine_schedule(epoch, args.epochs, 0.996, 1)
        for batch in dataloader:
            x0, x1 = batch[0]
            scores = batch.scores.to(device)  # SGCL: the region score of each pair
            update_momentum(model.backbone, model.backbone_momentum, m=momentum_val)
            update_momentum(model.projection_head, model.projection_head_momentum, m=momentum_val)
            x0 = x0.to(device)
            x1 = x1.to(device)
            p0 = model(x0)
            z0 = model.forward_momentum(x0)
            p1 = model(x1)
            z1 = model.forward_momentum(x1)
            loss = 0.5 * (criterion(p0, z1, scores) + criterion(p1, z0, scores))  # SGCL: + scores
            loss = loss + 0.5 * (inter(p0, scores) + inter(p1, scores))  # SGCL: Eq. 10, in lightly's -cos units
            inter.enqueue(torch.cat([z0, z1]))  # SGCL
            total_loss += loss.detach()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        avg_loss = total_loss / len(dataloader)
        print(f"epoch: {epoch:>02}, loss: {avg_loss:.5f}")
        losses.append(float(avg_loss))
    return {"losses": losses, "refreshes": bank.refreshes, "bank": bank, "model": model}


if __name__ == "__main__":
    main()
