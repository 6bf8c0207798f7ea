"""LiverCTSegmentation's Python library: the Slicer-free engine and its faces.

Importing this package must not import Slicer, Qt or torch.
"""
__version__ = "0.1.0"
