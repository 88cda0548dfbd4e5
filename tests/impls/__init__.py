"""Packed forwards written for the plugin tests, independently of ``esmfuzz.forward``."""
