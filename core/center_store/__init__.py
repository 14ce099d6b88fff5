"""The sharded per-class row store with its sparse row optimizer (see store.py), for center-based methods."""
