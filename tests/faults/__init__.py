"""Seeded faults: faulty packed and padded forwards that the fuzz targets must catch."""
