"""Deterministic synthetic retinal data: fundus photographs, angiograms and OCT scans drawn from
category labels, written in the on-disk layouts of the real datasets so the readers cannot tell.

    synthesize(out)                          a whole tree: public, MM-Retinal-like and evaluation sets
    render_for_dataframe(csv, image_root)    stand-in images for the rows of an existing dataframe
    render_cfp / render_ffa / render_oct     one image from a list of categories
"""

from shards.synth.angiogram import render_ffa
from shards.synth.dataframe import render_for_dataframe
from shards.synth.fundus import render_cfp
from shards.synth.layout import synthesize
from shards.synth.oct import render_oct

__all__ = ["render_cfp", "render_ffa", "render_for_dataframe", "render_oct", "synthesize"]
