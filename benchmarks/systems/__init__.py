"""Adapters: one ``System`` per peer and configuration, all with one interface."""
