"""Computation only: ArviZ conversion, diagnostics, figures. Nothing here reads or writes a run directory."""
