"""luab-data: learning using annotation byproducts at full GPU speed."""

__version__ = "0.1.0"
