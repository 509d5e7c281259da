"""hits-stamps: classify, explain the uncertainty of, generate, simulate and serve HiTS stamps.

A stamp is a small cutout (HiTS: 21x21 pixels) around a candidate detection, with four channels in
this order: template, science, difference, SNR.
"""

from hits_stamps.errors import HitsStampsError, StampFileError
from hits_stamps.stamps import CHANNELS, StampSet

__version__ = "0.1.0"

__all__ = ["CHANNELS", "HitsStampsError", "StampFileError", "StampSet", "__version__"]
