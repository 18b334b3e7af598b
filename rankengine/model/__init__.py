"""Model assembly: encoders → feature groups → backbone → one tower per head → cascade."""

from rankengine.model.assembly import FeatureEmbedder, RankingModel, build_model

__all__ = ["FeatureEmbedder", "RankingModel", "build_model"]
