"""What a contrastive problem is, independent of how it is computed.

One *direction* is M queries q_i against N keys k_j (the first N_grad of them receive gradient, the
rest are a queue). With s_ij = scale * <q_i, k_j>:

    positive  P_ij = [j == i + offset]  or, with positives="labels", also [same non-empty label set]
              (the true pair is always a positive, so every row has c_i >= 1)
    weight    w_ij = 1 for positives; for the rest 0 if exclude_false_negatives and same label set,
              else 1 - alpha * sim_ij with weighting "jaccard" | "cosine" (of the label sets), else 1
    row loss  L_i = log sum_j w_ij exp(s_ij)  -  sum_j P_ij s_ij / c_i,   c_i = sum_j P_ij
    loss      mean of L_i over the M rows

The symmetric loss is the mean of the image->text and text->image directions. A row whose every
negative is excluded still has its positive(s), so its loss is finite (zero for a single positive,
with zero gradient) and no NaN appears; an empty label set (no labels, or class id < 0) never
matches anything, so unlabelled samples are neither positives nor excluded negatives.

Labels come as class ids (int64, shape (B,)) or as multi-hot sets packed into int32 bit words
(shape (B, W), see `pack_multi_hot`). Kernels read them tile by tile; no M x N matrix is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

POSITIVES = ("identity", "labels")
WEIGHTINGS = (None, "jaccard", "cosine")


@dataclass(frozen=True)
class LossOptions:
    positives: str = "identity"
    exclude_false_negatives: bool = False
    weighting: str | None = None
    alpha: float = 0.5

    def __post_init__(self):
        if self.positives not in POSITIVES:
            raise ValueError(f"positives must be one of {POSITIVES}, got {self.positives!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")

    @property
    def needs_labels(self) -> bool:
        return self.positives == "labels" or self.exclude_false_negatives or self.weighting is not None


@dataclass(frozen=True)
class LabelCodes:
    """Labels of one side of a direction, as the kernels read them."""

    kind: str  # "class" | "bits"
    words: torch.Tensor  # (B, W) int32: class id in word 0, or packed bits
    popcount: torch.Tensor  # (B,) int32: set size (1 / 0 for class ids present / absent)

    def __len__(self) -> int:
        return self.words.shape[0]

    def rows(self, index: slice) -> "LabelCodes":
        return LabelCodes(self.kind, self.words[index], self.popcount[index])

    def cat(self, other: "LabelCodes") -> "LabelCodes":
        if other.kind != self.kind or other.words.shape[1] != self.words.shape[1]:
            raise ValueError("queue labels must have the same kind and width as the batch labels")
        return LabelCodes(self.kind, torch.cat([self.words, other.words]), torch.cat([self.popcount, other.popcount]))


def pack_multi_hot(multi_hot: torch.Tensor) -> torch.Tensor:
    """(B, C) 0/1 -> (B, ceil(C/32)) int32 bit words (bit c%32 of word c//32)."""
    if multi_hot.dim() != 2:
        raise ValueError(f"multi-hot labels must be (B, C), got shape {tuple(multi_hot.shape)}")
    bits = multi_hot.to(torch.bool)
    batch, classes = bits.shape
    words = (classes + 31) // 32
    padded = torch.zeros(batch, words * 32, dtype=torch.int64, device=bits.device)
    padded[:, :classes] = bits.to(torch.int64)
    shifts = torch.arange(32, dtype=torch.int64, device=bits.device)
    packed = (padded.view(batch, words, 32) << shifts).sum(-1)  # 0 .. 2**32-1
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_multi_hot(words: torch.Tensor) -> torch.Tensor:
    """(B, W) int32 bit words -> (B, 32 W) 0/1 int64, the inverse of `pack_multi_hot` (padded classes are 0)."""
    shifts = torch.arange(32, device=words.device, dtype=torch.int64)
    return ((words.to(torch.int64)[:, :, None] >> shifts) & 1).reshape(words.shape[0], -1)


def _popcount32(words: torch.Tensor) -> torch.Tensor:
    x = words.to(torch.int64) & 0xFFFFFFFF
    count = torch.zeros_like(x)
    for bit in range(32):
        count += (x >> bit) & 1
    return count


def label_codes(labels: torch.Tensor) -> LabelCodes:
    """Class ids (B,) or packed bit words (B, W) int32 -> LabelCodes."""
    if labels.dim() == 1:
        if labels.dtype.is_floating_point:
            raise ValueError("class-id labels must be an integer tensor")
        ids = labels.to(torch.int64)
        if ids.numel() and ids.max() >= 2**31:
            raise ValueError("class ids must be below 2**31")
        present = (ids >= 0).to(torch.int32)
        return LabelCodes("class", ids.to(torch.int32).unsqueeze(1).contiguous(), present)
    if labels.dim() == 2 and labels.dtype == torch.int32:
        return LabelCodes("bits", labels.contiguous(), _popcount32(labels).sum(1).to(torch.int32))
    raise ValueError("labels must be class ids of shape (B,) or int32 bit words of shape (B, W) "
                     f"(see pack_multi_hot); got {labels.dtype} {tuple(labels.shape)}")


def pair_rules(i: torch.Tensor, j: torch.Tensor, offset: int, rows: LabelCodes | None, keys: LabelCodes | None,
               opts: LossOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive mask and weights for the pairs of query indices i (m, 1) and key indices j (1, n).

    Shared by the chunked path (one row chunk at a time) and, in float64, by the reference.
    """
    positive = j == i + offset
    weight = torch.ones(positive.shape, dtype=torch.float32, device=i.device)
    if rows is None or keys is None:
        return positive, weight
    rw, kw = rows.words[i.squeeze(1)], keys.words[j.squeeze(0)]
    rp, kp = rows.popcount[i.squeeze(1)], keys.popcount[j.squeeze(0)]
    nonempty = (rp[:, None] > 0) & (kp[None, :] > 0)
    same = nonempty & (rw[:, None, :] == kw[None, :, :]).all(-1)
    if opts.positives == "labels":
        positive = positive | same
    if opts.weighting is not None:
        if rows.kind == "class":
            sim = same.to(torch.float32)
        else:
            inter = _popcount32(rw[:, None, :] & kw[None, :, :]).sum(-1).to(torch.float32)
            pi, pj = rp[:, None].to(torch.float32), kp[None, :].to(torch.float32)
            if opts.weighting == "jaccard":
                union = pi + pj - inter
                sim = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
            else:
                denom = torch.sqrt(pi * pj)
                sim = torch.where(denom > 0, inter / denom.clamp_min(1e-30), torch.zeros_like(inter))
        weight = 1.0 - opts.alpha * sim
    if opts.exclude_false_negatives:
        weight = torch.where(same, torch.zeros_like(weight), weight)
    weight = torch.where(positive, torch.ones_like(weight), weight)
    return positive, weight
