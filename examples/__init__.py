"""Runnable example applications: each module exposes its Registry as `jobs`."""
