"""Dataset refresh: real images, eval-mode handling, bad input, and 2-process distributed gathering."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from sgcl_plugin import (
    RegionCrops,
    SaliencyBank,
    SaliencyCropDataset,
    SaliencyCropTransform,
    SaliencyGenerator,
    refresh_bank,
)
from sgcl_plugin.backbones import resnet_backbone
from sgcl_plugin.features import default_device, eval_mode
from sgcl_plugin.images import SaliencyInput, to_image_tensor

SIZE = 224


def real_images(n: int) -> list:
    """n real photos from scikit-image (offline), cropped differently so that all differ."""
    skdata = pytest.importorskip("skimage.data")
    photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        k = i // len(photos)
        out.append(Image.fromarray(p[k * 20 :, k * 30 :]))
    return out


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return resnet_backbone("resnet18")


def test_refresh_fills_a_bank_from_real_images() -> None:
    images = real_images(5)
    model = make_model()
    bank = refresh_bank(SaliencyGenerator(), model, images, batch_size=2, saliency_size=SIZE, progress=False)
    assert isinstance(bank, SaliencyBank) and len(bank) == 5 and bank.refreshes == 1
    # the same as running the generator by hand on the same inputs
    x = torch.stack([SaliencyInput(SIZE)(im) for im in images])
    with torch.no_grad():
        expected = SaliencyGenerator()(model.eval()(x))
    for i in range(5):
        boxes, scores = bank[i]
        k = min(len(expected.regions[i]), bank.max_regions)
        torch.testing.assert_close(scores, expected.regions[i].scores[:k], atol=1e-4, rtol=0)
        torch.testing.assert_close(boxes, expected.regions[i].boxes[:k])
    stats = bank.stats()
    assert stats["images_with_regions"] == 5 and stats["regions_per_image"] >= 1


def test_refresh_into_existing_bank_bumps_version_and_accepts_tuples() -> None:
    images = real_images(3)
    dataset = [(im, label) for label, im in enumerate(images)]  # (image, target) items
    bank = SaliencyBank(3, max_regions=2)
    gen = SaliencyGenerator()
    refresh_bank(gen, make_model(), dataset, bank, saliency_size=SIZE, progress=False)
    refresh_bank(gen, make_model(), dataset, bank, saliency_size=SIZE, progress=False)
    assert bank.refreshes == 2 and bank.version == 2
    assert all(1 <= len(bank[i][1]) <= 2 for i in range(3))


def test_eval_mode_is_restored_per_module() -> None:
    model = make_model()
    model.train()
    model.trunk[1].eval()  # a frozen BN the user set on purpose
    seen = []
    gen = SaliencyGenerator()

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append((model.training, torch.is_grad_enabled()))
        return model(x)

    with eval_mode(model):
        refresh_bank(gen, spy, real_images(2), saliency_size=SIZE, progress=False)
    refresh_bank(gen, model, real_images(2), saliency_size=SIZE, progress=False)
    assert seen == [(False, False)]
    assert model.training and not model.trunk[1].training and model.trunk[4].training


def test_to_image_tensor_formats() -> None:
    arr = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)
    t = to_image_tensor(arr)
    assert t.shape == (3, 4, 5) and t.max() <= 1
    torch.testing.assert_close(to_image_tensor(Image.fromarray(arr)), t)
    torch.testing.assert_close(to_image_tensor(torch.from_numpy(arr).permute(2, 0, 1)), t)
    assert to_image_tensor({"image": arr[:, :, 0]}).shape == (3, 4, 5)
    with pytest.raises(TypeError, match="Cannot read an image"):
        to_image_tensor("photo.jpg")
    with pytest.raises(ValueError, match="channels"):
        to_image_tensor(torch.zeros(2, 4, 4))


def test_bad_input() -> None:
    gen = SaliencyGenerator()
    model = make_model()
    with pytest.raises(ValueError, match="empty dataset"):
        refresh_bank(gen, model, [], progress=False)
    with pytest.raises(ValueError, match="bank holds 4 images but the dataset has 2"):
        refresh_bank(gen, model, real_images(2), SaliencyBank(4), progress=False)
    with pytest.raises(ValueError, match="stride"):  # 16 px through a stride-32 trunk: a 1x1 map
        refresh_bank(gen, model, real_images(1), saliency_size=16, progress=False)
    with pytest.raises(TypeError, match="feature map tensor"):
        refresh_bank(gen, lambda x: (model(x),), real_images(1), saliency_size=64, progress=False)
    with pytest.raises(RuntimeError, match="not initialized"):
        refresh_bank(gen, model, real_images(1), saliency_size=64, progress=False, distributed=True)


def test_a_crop_datasets_refresh_must_fill_its_own_bank() -> None:
    """A fresh bank given with a crop dataset reaches no crop (training would keep its random crops): refused
    before any forward pass, naming the fix; the dataset's own bank is filled, through the dataset's images."""
    images = real_images(2)
    own = SaliencyBank(2, max_regions=4)
    data = SaliencyCropDataset(images, SaliencyCropTransform(own, num_regions=2, size=32))
    model = make_model()
    with pytest.raises(ValueError, match=r"not the one the dataset's SaliencyCropTransform reads.*bank=dataset\.bank"):
        refresh_bank(SaliencyGenerator(), model, data, bank=SaliencyBank(2), saliency_size=256, progress=False)
    with pytest.raises(ValueError, match="bank=dataset.bank"):  # a stateless crop step with the bank given apart
        refresh_bank(SaliencyGenerator(), model, SaliencyCropDataset(images, RegionCrops(2, 32), bank=own),
                     bank=SaliencyBank(2), saliency_size=256, progress=False)  # fmt: skip
    assert own.refreshes == 0
    assert refresh_bank(SaliencyGenerator(), model, data, bank=own, saliency_size=256, progress=False) is own
    assert own.refreshes == 1 and (own.counts > 0).all()
    # a plain dataset cannot tell which bank its crops read: nothing to check there
    assert refresh_bank(SaliencyGenerator(), model, images, SaliencyBank(2), saliency_size=256, progress=False)


def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str, n: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        bank = refresh_bank(
            SaliencyGenerator(), make_model(), real_images(n), batch_size=1, saliency_size=SIZE, progress=False
        )
        torch.save(bank.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("n", [7])  # not divisible by the world size
def test_distributed_refresh_equals_single_process(tmp_path, n: int) -> None:
    world = 2
    mp.spawn(_distributed_worker, args=(world, str(tmp_path / "init"), str(tmp_path), n), nprocs=world, join=True)
    single = refresh_bank(
        SaliencyGenerator(), make_model(), real_images(n), batch_size=1, saliency_size=SIZE, progress=False
    )
    for rank in range(world):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert state["refreshes"] == 1
        for key in ("boxes", "scores", "counts", "fallback"):
            torch.testing.assert_close(state[key], getattr(single, key), msg=f"rank {rank}: {key} differs")
    assert (single.counts > 0).all()


def test_all_gather_device_follows_the_backend() -> None:
    """The refresh's all-gather: CPU tensors where the group can move them (gloo, a mixed group); CUDA tensors on
    the refresh's own device for an NCCL-only group (was: always cuda:current_device, and only for 'nccl')."""
    from sgcl_plugin.distributed import comm_device

    cpu = torch.device("cpu")
    assert comm_device("gloo", cpu) == cpu
    assert comm_device("cpu:gloo,cuda:nccl", torch.device("cuda", 1)) == cpu
    assert comm_device("nccl", torch.device("cuda", 3)) == torch.device("cuda", 3)
    assert comm_device("cuda:nccl", torch.device("cuda", 2)) == torch.device("cuda", 2)
    if torch.cuda.is_available():
        current = torch.device("cuda", torch.cuda.current_device())
        assert comm_device("nccl", cpu) == current and comm_device("nccl", torch.device("cuda")) == current


def testdefault_device_reads_through_bound_methods() -> None:
    """A bound method of a module (backbone.forward_features) runs on the module's device (it ran on the CPU)."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, device="meta"))

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return x

    net = Net()
    assert default_device(net) == torch.device("meta")
    assert default_device(net.features) == torch.device("meta")
    assert default_device(lambda x: x) == torch.device("cpu")
    only_buffers = torch.nn.BatchNorm2d(3, affine=False).to("meta")
    assert default_device(only_buffers) == torch.device("meta")
