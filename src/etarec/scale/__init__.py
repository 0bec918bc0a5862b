"""Embedding tables split over the torchrun processes with TorchRec (model.embeddings: torchrec).

Only imported when a config asks for it: TorchRec is the optional extra `scale`, and the core
install (and `import etarec`) stays without it.
"""
from __future__ import annotations

from etarec.errors import EtarecError

INSTALL = "pip install -e '.[scale]' && pip install --no-deps torchrec==1.8.0"  # what `make dev` runs


def require_torchrec() -> None:
    """One EtarecError line naming the install command when TorchRec (or its fbgemm) is missing."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except (ImportError, OSError) as error:  # OSError: an fbgemm build whose native library does not load
        raise EtarecError(f"model.embeddings: torchrec needs TorchRec, which does not import here ({error}); "
                          f"install the extra: `{INSTALL}`") from None
