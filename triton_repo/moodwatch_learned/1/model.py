"""moodwatch `moodwatch_learned` model (Triton python backend): the learned-proposal analysis in one process

The numbers come from pipelines.analyze (retrieval_stage, heads_stage) and pipelines.regions (learned_top_regions), the
code LocalAnalyzer runs with MOODWATCH_REGION_PROPOSALS=learned; request handling is in moodwatch_serving.py, which
`moodwatch triton export` copies next to this file.
"""

from moodwatch_serving import LearnedStage


class TritonPythonModel(LearnedStage):
    """initialize / execute / finalize come from LearnedStage (one response per request, per-request errors)."""
