"""Telebridge bench package (see its issue; empty until then)."""
