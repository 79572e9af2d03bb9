"""kernels: Triton fused contrastive-loss and attention kernels, their torch references and backend dispatch."""

from kernels.contrastive import contrastive_loss, pack_multi_hot
from kernels.contrastive.distributed import distributed_contrastive_loss

__all__ = ["contrastive_loss", "distributed_contrastive_loss", "pack_multi_hot"]
