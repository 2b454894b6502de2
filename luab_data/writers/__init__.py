"""Writers of packed outputs; every one is atomic (temporary names, then renames, manifest last)."""
