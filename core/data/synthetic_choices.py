"""The synthetic generator's named choices, importable without numpy or torch (the CLI's --help reads them)."""

RENDERERS = ("faces", "shapes")  # faces, or abstract badges in families of look-alikes (shapes.py)
FLIP_TARGETS = ("uniform", "lookalike")  # a flipped label points at any other identity, or a look-alike
