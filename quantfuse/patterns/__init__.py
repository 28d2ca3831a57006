"""Pattern families: search graphs generated from the activation and scheme tables."""
