"""moodwatch `heads` model (Triton python backend): MIRA polarity + EW-MTCNN emotion distribution

The numbers come from pipelines.analyze (heads_stage), the code LocalAnalyzer runs; request handling is
in moodwatch_serving.py, which `moodwatch triton export` copies next to this file.
"""

from moodwatch_serving import HeadsStage


class TritonPythonModel(HeadsStage):
    """initialize / execute / finalize come from HeadsStage (one response per request, per-request errors)."""
