"""moodwatch `retrieval` model (Triton python backend): aligned embedding -> FAISS top-k -> stored text features + evidence sentences

The numbers come from pipelines.analyze (retrieval_stage), the code LocalAnalyzer runs; request handling is
in moodwatch_serving.py, which `moodwatch triton export` copies next to this file.
"""

import os
import sys

# The python-backend stub embeds its own interpreter and ignores PYTHONPATH. Whoever starts
# tritonserver (workers/devstack/triton_server.py does) lists the project and its environment here; they go
# first on sys.path *before numpy is imported*: the stub's interpreter may carry numpy 2.x, with
# which python-backend outputs came back empty (numpy 1.26 works). In a Triton image with the
# project installed the variable is unset and nothing changes.
for _path in reversed([p for p in os.environ.get("MOODWATCH_TRITON_PYTHONPATH", "").split(os.pathsep) if p]):
    if _path in sys.path:
        sys.path.remove(_path)
    sys.path.insert(0, _path)

from moodwatch_serving import RetrievalStage


class TritonPythonModel(RetrievalStage):
    """initialize / execute / finalize come from RetrievalStage (one response per request, per-request errors)."""
