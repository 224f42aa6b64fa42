"""jaxlsq: differentiable least squares for JAX."""

from importlib.metadata import PackageNotFoundError, version

from ._factorization import Factorization as Factorization
from ._factorization import factorize as factorize
from ._lstsq import LstsqResult as LstsqResult
from ._lstsq import lstsq as lstsq
from ._sharded import sharded_lstsq as sharded_lstsq

try:
    __version__ = version("jaxlsq")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["Factorization", "LstsqResult", "factorize", "lstsq", "sharded_lstsq", "__version__"]
