"""Model families. Importing this package registers every variant."""

from glocal.models import resnet
from glocal.models._base import Backbone, DataConfig, FeatureInfo
from glocal.models._features import FeaturePyramid

__all__ = ["Backbone", "DataConfig", "FeatureInfo", "FeaturePyramid", "resnet"]
