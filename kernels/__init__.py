"""kernels: Triton fused contrastive-loss and attention kernels, their torch references and backend dispatch."""
