"""KiMapLib: ki67 maps of glioblastoma from coregistered MRI (plain Python core, no Slicer imports).

Research use only: not a medical device, no clinical validity claimed.
"""

__version__ = "0.1.0"
