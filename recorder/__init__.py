"""Telebridge recorder package (see its issue; empty until then)."""
