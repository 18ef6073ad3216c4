"""`ldcache inspect STORE --serve`: a local web viewer over a store (Plotly Dash)."""
from .app import build_app, serve

__all__ = ["build_app", "serve"]
