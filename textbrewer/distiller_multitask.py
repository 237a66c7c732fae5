"""TextBrewer 0.2.x's module path ``textbrewer.distiller_multitask`` (``MultiTaskDistiller``).

It re-exports the names of ``textbrewer.distiller_utils`` (as 0.2.x modules did), each an alias
of the one implementation, so
``from textbrewer.distiller_multitask import MultiTaskDistiller`` works unchanged.
"""

from textbrewer.distiller_utils import *  # noqa: F403  (the 0.2.x names, see distiller_utils)
from textbrewer.distiller_utils import __all__  # noqa: F401
