"""The analyze commands' choices and defaults, importable without torch, faiss or matplotlib.

``python cli.py --help`` builds every command's options; keeping these here lets it do so
without loading the libraries the analyses themselves need.
"""

# Where class centers come from (see analysis.centers.choose_centers).
CENTER_SOURCES = ("auto", "store", "means")
# Nearest other centers per class that conflict detection looks at.
DEFAULT_K = 5
