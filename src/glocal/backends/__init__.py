"""Compute backends: opt-in faster routes behind one seam. glocal models are torch's standard path until one is
enabled; :mod:`glocal.backends.cpu` is the CPU backend (``glocal.backends.enable(model)``)."""

from glocal.backends.cpu import (
    capturing_graph,
    disable,
    enable,
    is_enabled,
    load_route_state,
    route_state,
)

__all__ = ["capturing_graph", "disable", "enable", "is_enabled", "load_route_state", "route_state"]
