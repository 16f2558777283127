"""SimCLR written the way lightly's own PyTorch example is, with SGCL added: every SGCL line ends in `# SGCL`.

    python examples/lightly_simclr.py                  # composed scenes (Fashion-MNIST objects on real textures)
    python examples/lightly_simclr.py --data photos/   # any folder of images, read by lightly's LightlyDataset
    python examples/lightly_simclr.py --smoke          # 16 images, 2 epochs, a refresh at epoch 1 (< 1 min on a CPU)

docs/adapters/lightly.md shows the BYOL version as a diff against the plain lightly loop; the SimCLR changes are
the same, plus `image_ids` so that views of the same image are not each other's negatives.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence

import torch
import torchvision
from lightly.data import LightlyDataset
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRViewTransform
from torch import nn

from sgcl_plugin import SaliencyBank, SaliencyGenerator  # SGCL
from sgcl_plugin.adapters.lightly import SGCLDataset, SGCLLoss, SGCLRefresher, SGCLTransform, sgcl_collate  # SGCL


class SimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(512, hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone(x).flatten(start_dim=1)
        return self.projection_head(y)


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
    saliency_size=128, hidden_dim=64, out_dim=32, workers=0,
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
    p.add_argument("--temperature", type=float, default=0.5, help="NT-Xent temperature (lightly's default)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="images per step (each gives t pairs)")
    p.add_argument("--lr", type=float, default=0.06)
    p.add_argument("--hidden-dim", type=int, default=512)
    p.add_argument("--out-dim", type=int, default=128)
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
    model = SimCLR(backbone, args.hidden_dim, args.out_dim).to(device)

    if args.data == "composed":
        dataset = LightlyDataset.from_torch_dataset(ComposedSceneImages(args.num_images, args.image_size, args.seed))
    else:
        dataset = LightlyDataset(args.data)  # no transform: SGCLTransform makes the views

    bank = SaliencyBank(len(dataset))  # SGCL: the regions of every image (empty: plain random crops)
    view = SimCLRViewTransform(input_size=args.crop_size, min_scale=1.0)  # SGCL: SimCLR's views, no second crop
    transform = SGCLTransform(bank, args.num_regions, args.crop_size, view, view)  # SGCL: not SimCLRTransform
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

    criterion = SGCLLoss(NTXentLoss(temperature=args.temperature), gamma=args.gamma)  # SGCL: weighted by P^gamma
    generator = SaliencyGenerator(min_area=args.min_area)  # SGCL: normalized-cut saliency
    # SGCL: regions from the backbone's last map and its stride-16 stage (layer4 and layer3), before its pooling
    refresher = SGCLRefresher(bank, dataset, args.refresh_every, generator, saliency_size=args.saliency_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)

    losses = []
    print("Starting Training")
    for epoch in range(args.epochs):
        refresher.maybe_refresh(epoch, model.backbone)  # SGCL: new regions from the current backbone
        total_loss = 0.0
        for batch in dataloader:
            x0, x1 = batch[0]
            scores = batch.scores.to(device)  # SGCL: the region score of each pair
            image_ids = batch.index.to(device)  # SGCL: views of one image are not negatives of each other
            x0 = x0.to(device)
            x1 = x1.to(device)
            z0 = model(x0)
            z1 = model(x1)
            loss = criterion(z0, z1, scores, image_ids=image_ids)  # SGCL: + scores, image_ids
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
