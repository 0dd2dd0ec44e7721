"""Scripts that train the small models shipped with the package."""
