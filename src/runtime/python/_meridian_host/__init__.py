"""Meridian's Python host for truss packages (see ../truss_host.py); standard library only."""
