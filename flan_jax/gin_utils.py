"""Where the gin helpers lived before flan_jax.cli and flan_jax.model_loader: kept only while
flan_jax/train.py, tasks/inspect.py, benchmarks/ and their tests move to those; delete then."""

from flan_jax.cli import GIN_DIR as DEFAULT_SEARCH_PATH  # noqa: F401
from flan_jax.cli import parse  # noqa: F401
from flan_jax.model_loader import model_from_gin_file as load_model  # noqa: F401
