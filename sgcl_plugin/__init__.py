"""sgcl_plugin: Saliency Guided Contrastive Learning (Chen et al., AAAI 2023) for your SSL loop."""

from sgcl_plugin.affinity import cosine_affinity, tokens_to_map
from sgcl_plugin.bank import SaliencyBank
from sgcl_plugin.bank_crops import SaliencyCropDataset, SaliencyCropTransform
from sgcl_plugin.boxes import random_resized_crop_box, sample_crop_in_box
from sgcl_plugin.crops import CropSample, RegionCrops, sample_regions
from sgcl_plugin.features import FeatureMaps, feature_maps, refresh_features
from sgcl_plugin.image_folder import ImageFiles, UnreadableImageError
from sgcl_plugin.images import SaliencyInput
from sgcl_plugin.inter_image_loss import FeatureQueue, InterImageLoss, inter_image_loss
from sgcl_plugin.items import DatasetImages, split_item
from sgcl_plugin.ncut import fiedler_vector, ncut_embedding
from sgcl_plugin.objective import SGCLObjective
from sgcl_plugin.pair_losses import byol_loss, nnclr_loss, ntxent_loss
from sgcl_plugin.refresh import refresh_bank
from sgcl_plugin.refresher import SaliencyRefresher, refresh_regions
from sgcl_plugin.regions import Regions, extract_regions
from sgcl_plugin.saliency import ChannelSumGenerator, SaliencyGenerator, SaliencyResult, orient
from sgcl_plugin.schedule import RefreshSchedule
from sgcl_plugin.views import byol_view_transforms
from sgcl_plugin.weighted_loss import SaliencyWeightedLoss, saliency_weighted_loss

__version__ = "0.2.0"

__all__ = [
    "ChannelSumGenerator",
    "CropSample",
    "DatasetImages",
    "FeatureMaps",
    "FeatureQueue",
    "ImageFiles",
    "InterImageLoss",
    "RefreshSchedule",
    "RegionCrops",
    "Regions",
    "SGCLObjective",
    "SaliencyBank",
    "SaliencyCropDataset",
    "SaliencyCropTransform",
    "SaliencyGenerator",
    "SaliencyInput",
    "SaliencyRefresher",
    "SaliencyResult",
    "SaliencyWeightedLoss",
    "UnreadableImageError",
    "byol_loss",
    "byol_view_transforms",
    "cosine_affinity",
    "extract_regions",
    "feature_maps",
    "fiedler_vector",
    "inter_image_loss",
    "ncut_embedding",
    "nnclr_loss",
    "ntxent_loss",
    "orient",
    "random_resized_crop_box",
    "refresh_bank",
    "refresh_features",
    "refresh_regions",
    "saliency_weighted_loss",
    "sample_crop_in_box",
    "sample_regions",
    "split_item",
    "tokens_to_map",
]
