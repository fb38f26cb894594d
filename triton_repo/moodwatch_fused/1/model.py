"""moodwatch `moodwatch_fused` model (Triton python backend): every stage in one process, same interface as the `moodwatch` ensemble

The numbers come from pipelines.analyze (retrieval_stage, heads_stage, region_distributions), the code LocalAnalyzer runs; request handling is
in moodwatch_serving.py, which `moodwatch triton export` copies next to this file.
"""

from moodwatch_serving import FusedStage


class TritonPythonModel(FusedStage):
    """initialize / execute / finalize come from FusedStage (one response per request, per-request errors)."""
