"""Serving: the Scorer (Python API), the HTTP service and the ONNX export.

Only the Scorer is imported here; service.py (FastAPI, uvicorn) and export.py (onnx) load their
optional dependencies when used: pip install 'etarec[serve]'.
"""
from etarec.serve.scorer import BadRequest, History, Scorer, Scores

__all__ = ["BadRequest", "History", "Scorer", "Scores"]
