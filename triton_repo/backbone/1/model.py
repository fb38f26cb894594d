"""moodwatch `backbone` model (Triton python backend): resized pixels -> feature map + pooled vector.

The numbers come from the project's ImageBackbone, normalised with the same float ops as
ImageBackbone.preprocess (the client resizes with that same function, so both backends feed the
backbone identical tensors); request handling is in moodwatch_serving.py, which
`moodwatch triton export` copies next to this file.
"""

from moodwatch_serving import BackboneStage


class TritonPythonModel(BackboneStage):
    """initialize / execute / finalize come from BackboneStage (one response per request, per-request errors)."""
