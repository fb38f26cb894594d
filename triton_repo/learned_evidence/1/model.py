"""moodwatch `learned_evidence` model (Triton python backend): retrieved sentence ids -> the sentences as JSON.

Request handling is in moodwatch_serving.py, which `moodwatch triton export` copies next to this file.
"""

from moodwatch_serving import EvidenceStage


class TritonPythonModel(EvidenceStage):
    """initialize / execute / finalize come from EvidenceStage (one response per request, per-request errors)."""
