"""qflow: hybrid HPC + quantum workflows in CWL, each step on a location chosen at run time."""

__version__ = "0.1.0"
