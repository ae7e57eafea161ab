"""Model families. Importing this package registers every variant."""

from glocal.models import resnet, t2t_vit, twins, vit, volo
from glocal.models._base import Backbone, DataConfig, FeatureInfo
from glocal.models._features import FeaturePyramid

__all__ = ["Backbone", "DataConfig", "FeatureInfo", "FeaturePyramid", "resnet", "t2t_vit", "twins", "vit", "volo"]
