"""microbroker-template: an in-process broker plugin to copy when writing your own."""

from .broker import TemplateBroker
from .options import TemplateOptions

__all__ = ["TemplateBroker", "TemplateOptions"]
__version__ = "0.1.0"
