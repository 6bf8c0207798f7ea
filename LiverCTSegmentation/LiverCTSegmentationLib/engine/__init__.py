"""Slicer-free segmentation engine (numpy, torch, SimpleITK)."""
from .errors import BundleError, Cancelled, InputError, LiverSegError, OutputError, ResourceError
from .progress import Progress
from .volume import Volume

__all__ = ["Volume", "Progress", "LiverSegError", "InputError", "BundleError", "ResourceError", "OutputError", "Cancelled"]
