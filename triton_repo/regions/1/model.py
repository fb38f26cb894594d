"""moodwatch `regions` model (Triton python backend): RoI features of the candidate boxes -> region scorer distributions

The numbers come from pipelines.analyze (region_distributions), the code LocalAnalyzer runs; request handling is
in moodwatch_serving.py, which `moodwatch triton export` copies next to this file.
"""

from moodwatch_serving import RegionsStage


class TritonPythonModel(RegionsStage):
    """initialize / execute / finalize come from RegionsStage (one response per request, per-request errors)."""
