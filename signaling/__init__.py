"""Telebridge signaling package (see its issue; empty until then)."""
