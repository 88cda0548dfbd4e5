"""esmfuzz: property-based fuzzing of low-precision and packed ESM-2 inference."""

__version__ = "0.1.0"
