"""KeepFIT V1's offline variant input (cluster.offline_captions)."""

from __future__ import annotations

import numpy as np

from cluster.offline_captions import nearest_elite_captions


def test_nearest_elite_captions_by_hand():
    public = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    elite = np.array([[0.0, 1.0], [1.0, 0.0]])
    mapping = nearest_elite_captions(["a", "b", "c"], public, elite, ["vertical", "horizontal"])
    assert mapping == {"a": "horizontal", "b": "vertical", "c": "vertical"}
