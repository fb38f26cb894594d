"""moodwatch `retrieval` model (Triton python backend): aligned embedding -> FAISS top-k -> stored text features + evidence sentences

The numbers come from pipelines.analyze (retrieval_stage), the code LocalAnalyzer runs; request handling is
in moodwatch_serving.py, which `moodwatch triton export` copies next to this file.
"""

from moodwatch_serving import RetrievalStage


class TritonPythonModel(RetrievalStage):
    """initialize / execute / finalize come from RetrievalStage (one response per request, per-request errors)."""
