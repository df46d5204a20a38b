"""Stage 2: contrastive training of an image encoder against a frozen gene encoder."""
from stguide.contrastive.api import embed_images, fit_image_encoder
from stguide.contrastive.config import ContrastiveConfig
from stguide.contrastive.encoders import build_image_encoder
from stguide.contrastive.heads import ProjectionHead
from stguide.contrastive.losses import LOSSES, ContrastiveLoss, get_loss
from stguide.contrastive.train import extract_features, train_contrastive

__all__ = ["LOSSES", "ContrastiveConfig", "ContrastiveLoss", "ProjectionHead", "build_image_encoder", "embed_images", "extract_features", "fit_image_encoder",
           "get_loss", "train_contrastive"]
