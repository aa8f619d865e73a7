"""ArviZ conversion, diagnostics, figures and reports."""
