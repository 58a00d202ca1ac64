"""Metric learning: ``contrastive`` pairs, ``triplet`` margins, ``cosine_embedding`` pairs and

Their parameters and declarations, without torch: the checks read these. The modules that compute
the terms are in ``lossdsl.library.metric_learning``, imported on first use (``TermDef.module``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt, model_validator

from ...declarations import InputOf, ReductionParam, SampleWeight, TermParams, declare


#: margin_ranking's margin: a pair costs up to about the margin, which a float32 sum still holds.
MAX_CONTRASTIVE_MARGIN = 1e15


#: contrastive's: a pair costs up to margin^2 (1e12), and ``augmented`` squares the summed loss
#: again; a distance margin beyond 1e6 is a mistake of units, not a setting.
MAX_SQUARED_MARGIN = 1e6


class ContrastiveParams(TermParams):
    a: InputOf("embedding", "real") = Field("a", description="first embedding of each pair [N, D] ([N]: D = 1)")
    b: InputOf("embedding", "real") = Field("b", description="second embedding of each pair, of a's shape")
    same: InputOf("binary", "labels", "mask") = Field("same", description="1 where the pair should match, 0 where it should not [N]")
    margin: float = Field(
        1.0, gt=0, le=MAX_SQUARED_MARGIN,
        description="distance beyond which dissimilar pairs cost nothing; at most 1e6, so that the squared "
        "margin summed over a batch, and squared again by a constraint's `augmented` term, stays within float32",
    )
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


class TripletParams(TermParams):
    anchor: InputOf("embedding", "real") = Field("anchor", description="anchor embeddings [N, D]")
    positive: InputOf("embedding", "real") = Field("positive", description="embeddings that should be near the anchor [N, D]")
    negative: InputOf("embedding", "real") = Field("negative", description="embeddings that should be far from the anchor [N, D]")
    margin: float = Field(1.0, gt=0, description="the required gap between the two distances")
    p: PositiveInt = Field(2, description="the norm of the distance (any p: beyond 2 it is computed scaled by "
                           "the largest coordinate, so no power of a distance can overflow)")
    swap: bool = Field(False, description="use the positive-negative distance instead of the anchor-negative one "
                       "where it is smaller (F.triplet_margin_loss(swap=True), the distance swap of Balntas et al.)")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


class CosineEmbeddingParams(TermParams):
    x1: InputOf("embedding", "real") = Field("x1", description="first embedding of each pair [N, D]")
    x2: InputOf("embedding", "real") = Field("x2", description="second embedding of each pair, of x1's shape")
    y: InputOf("labels", "binary", "real") = Field("y", description="1 where the pair should be similar, -1 where not [N]")
    margin: float = Field(0.0, ge=-1, le=1, description="cosine similarity below which dissimilar pairs cost nothing")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


class MarginRankingParams(TermParams):
    x1: InputOf("logits", "real") = Field("x1", description="first score of each pair [N, ...]")
    x2: InputOf("logits", "real") = Field("x2", description="second score of each pair, of x1's shape")
    y: InputOf("labels", "binary", "real") = Field("y", description="1 where x1 should rank higher, -1 where x2 should, of x1's shape")
    margin: float = Field(0.0, ge=-MAX_CONTRASTIVE_MARGIN, le=MAX_CONTRASTIVE_MARGIN,
                          description="the required gap between the two scores")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


#: How the batch's pairs and triplets are chosen from its labels.
Mining = Literal["all", "batch_hard", "semi_hard"]


#: How the chosen pairs' or triplets' losses are averaged.
BatchReduction = Annotated[
    Literal["mean_nonzero", "mean", "sum"],
    Field(description="mean_nonzero: the mean of the losses above 0 (pytorch-metric-learning's "
          "AvgNonZeroReducer, its default), 0 when none is; mean: over every chosen pair or triplet "
          "(MeanReducer); sum (SumReducer)"),
]


#: The largest margin: a batch of 256 holds 1.6e7 triplets, whose summed margins float32 still holds.
MAX_BATCH_MARGIN = 1e15


class _BatchParams(TermParams):
    embeddings: InputOf("embedding", "real") = Field("embeddings", description="one embedding per sample [N, D]")
    labels: InputOf("labels", "binary", "group") = Field(
        "labels", description="each sample's class [N]: samples of one class make positive pairs, of two classes negative ones")
    mining: Mining = Field(
        "all", description="all: every valid pair or triplet (pytorch-metric-learning without a miner); "
        "batch_hard: each anchor's farthest positive and nearest negative (BatchHardMiner); "
        "semi_hard: the triplets with d_ap < d_an <= d_ap + mining_margin "
        "(TripletMarginMiner(type_of_triplets=\"semihard\"))")
    mining_margin: float = Field(
        0.2, gt=0, le=MAX_BATCH_MARGIN,
        description="semi_hard's window above d_ap (TripletMarginMiner's margin, whose default is 0.2); "
        "only with mining=semi_hard")
    normalize: bool = Field(
        True, description="scale each embedding to unit length before the distances, as pytorch-metric-learning's "
        "default LpDistance(normalize_embeddings=True) does; false: raw Euclidean distances")
    reduction: BatchReduction = "mean_nonzero"

    @model_validator(mode="after")
    def _mining_margin_needs_semi_hard(self) -> "_BatchParams":
        if "mining_margin" in self.model_fields_set and self.mining != "semi_hard":
            raise ValueError("mining_margin is the window of mining=semi_hard; give mining=semi_hard too, or leave it out")
        return self


class BatchTripletParams(_BatchParams):
    margin: float = Field(0.05, gt=0, le=MAX_BATCH_MARGIN,
                          description="the required gap d_an - d_ap (pytorch-metric-learning's default 0.05)")
    swap: bool = Field(False, description="use d_pn instead of d_an where it is smaller (the distance swap of "
                       "Balntas et al.; TripletMarginLoss(swap=True), F.triplet_margin_loss(swap=True))")


class BatchContrastiveParams(_BatchParams):
    pos_margin: float = Field(0.0, ge=0, le=MAX_BATCH_MARGIN,
                              description="the distance below which a positive pair costs nothing (PML's default 0)")
    neg_margin: float = Field(1.0, gt=0, le=MAX_BATCH_MARGIN,
                              description="the distance beyond which a negative pair costs nothing (PML's default 1)")


declare(
    "contrastive",
    ContrastiveParams,
    "Contrastive loss: same * d^2 + (1 - same) * relu(margin - d)^2.",
    example="contrastive(margin=2.0)",
    implementation="lossdsl.library.metric_learning:Contrastive",
    per_sample=True,
)


declare(
    "triplet",
    TripletParams,
    "Triplet margin loss, as F.triplet_margin_loss.",
    example="triplet(margin=0.5)",
    implementation="lossdsl.library.metric_learning:Triplet",
    per_sample=True,
)


declare(
    "cosine_embedding",
    CosineEmbeddingParams,
    "Cosine embedding loss, 1 - cos for similar pairs and relu(cos - margin) for others, as F.cosine_embedding_loss.",
    example="cosine_embedding(x1=a, x2=b, y=same, margin=0.5)",
    shapes={"x1": ("N", "D"), "x2": ("N", "D")},
    implementation="lossdsl.library.metric_learning:CosineEmbedding",
    per_sample=True,
)


declare(
    "margin_ranking",
    MarginRankingParams,
    "Margin ranking loss relu(margin - y (x1 - x2)), as F.margin_ranking_loss.",
    example="margin_ranking(x1=score_a, x2=score_b, y=order, margin=0.1)",
    shapes={"x1": ("N",), "x2": ("N",), "y": ("N",)},
    implementation="lossdsl.library.metric_learning:MarginRanking",
    per_sample=True,
)


declare(
    "batch_triplet",
    BatchTripletParams,
    "Triplet margin loss over the triplets of a labelled batch, as pytorch-metric-learning's TripletMarginLoss.",
    example="batch_triplet(embeddings=z, labels=y, mining=semi_hard, margin=0.2)",
    shapes={"embeddings": ("N", "D")},
    implementation="lossdsl.library.metric_learning:BatchTriplet",
)


declare(
    "batch_contrastive",
    BatchContrastiveParams,
    "Contrastive loss over the pairs of a labelled batch, as pytorch-metric-learning's ContrastiveLoss.",
    example="batch_contrastive(embeddings=z, labels=y, pos_margin=0.1, neg_margin=0.9)",
    shapes={"embeddings": ("N", "D")},
    implementation="lossdsl.library.metric_learning:BatchContrastive",
)
