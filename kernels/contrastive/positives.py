"""The positive (target) side of the contrastive loss in O((M + N) x D) work: no pair is enumerated.

A row's loss is L_i = lse_i - a_i / c_i with a_i = sum_j P_ij s_ij and c_i = sum_j P_ij (spec.py). The
positives P_ij are the true pair j = i + offset and, with positives="labels", every key with the same
non-empty label set. Identical label sets form groups, so with g(i) the group of row i

    sum_j P_ij v_j k_j = sum_{j in group g(i)} v_j k_j  (+ v_{i+offset} k_{i+offset} if that key is not in it)

and one index_add over the keys serves every row; a_i = scale <q_i, that sum>. The key weights v_j (no
gradient) let the symmetric loss attribute the column targets a_j / c_j to the rows that hold them. These
are plain torch expressions, so autograd differentiates them; the kernels only compute log-sum-exps.
On CUDA, index_add accumulates with atomics: the group sums of label positives can differ between runs in
their last bits unless torch.use_deterministic_algorithms(True) is set (identity positives use no sum).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.contrastive.spec import LabelCodes, LossOptions


@dataclass(frozen=True)
class PositiveSets:
    """Who is positive for whom, for M rows against N keys: group ids and the true pairs outside them."""

    row_group: torch.Tensor  # (M,) int64, -1: the row matches no key by label
    key_group: torch.Tensor  # (N,) int64, -1: the key is in no group
    groups: int
    offset: int | None  # the true pair of row i is key i + offset; None: no true pair (queues)
    extra_true_pair: torch.Tensor  # (M,) bool: the true pair counts on its own (not in the row's group)
    count: torch.Tensor  # (M,) fp32: c_i

    @property
    def by_label(self) -> bool:
        return self.groups > 0


def _group_ids(rows: LabelCodes, keys: LabelCodes) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Equal non-empty label sets get one id (rows and keys alike); empty ones -1."""
    words = torch.cat([rows.words, keys.words])
    nonempty = torch.cat([rows.popcount, keys.popcount]) > 0
    if not bool(nonempty.any()):
        none = torch.full((len(words),), -1, dtype=torch.int64, device=words.device)
        return none[:len(rows)], none[len(rows):], 0
    unique, inverse = torch.unique(words[nonempty], dim=0, return_inverse=True)
    ids = torch.full((len(words),), -1, dtype=torch.int64, device=words.device)
    ids[nonempty] = inverse
    return ids[:len(rows)], ids[len(rows):], len(unique)


def positive_sets(m: int, n: int, offset: int | None, rows: LabelCodes | None, keys: LabelCodes | None,
                  opts: LossOptions, device: torch.device) -> PositiveSets:
    none = torch.full((m,), -1, dtype=torch.int64, device=device)
    if opts.positives == "labels" and rows is not None and keys is not None:
        row_group, key_group, groups = _group_ids(rows, keys)
    else:
        row_group, key_group, groups = none, torch.full((n,), -1, dtype=torch.int64, device=device), 0
    if offset is None:
        extra = torch.zeros(m, dtype=torch.bool, device=device)
    else:
        extra = (row_group < 0) | (key_group[offset:offset + m] != row_group)
    count = extra.float()
    if groups:
        per_group = torch.bincount(key_group[key_group >= 0], minlength=groups).float()
        count = count + torch.where(row_group >= 0, per_group[row_group.clamp_min(0)], 0.0)
    return PositiveSets(row_group, key_group, groups, offset, extra, count)


def positive_sum(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, sets: PositiveSets,
                 key_weight: torch.Tensor | None = None) -> torch.Tensor:
    """a_i = sum_j P_ij v_j s_ij (v = key_weight, default 1) for every row, fp32 (M,), with autograd."""
    qf, kf = q.float(), k.float()
    m = q.shape[0]
    if key_weight is not None:
        kf = kf * key_weight[:, None]
    if not sets.by_label:  # the true pair alone (or nothing, for a queue without labels)
        if sets.offset is None:
            return qf.new_zeros(m)
        return scale.float() * (qf * kf[sets.offset:sets.offset + m]).sum(1)
    keyed = sets.key_group >= 0
    group_sums = kf.new_zeros(sets.groups, kf.shape[1]).index_add(0, sets.key_group[keyed], kf[keyed])
    target = torch.where((sets.row_group >= 0)[:, None], group_sums[sets.row_group.clamp_min(0)], 0.0)
    if sets.offset is not None:
        true_keys = kf[sets.offset:sets.offset + m]
        target = target + torch.where(sets.extra_true_pair[:, None], true_keys, 0.0)
    return scale.float() * (qf * target).sum(1)
