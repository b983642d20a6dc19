"""User data and code: recipes and loaders, timing feeds, importing user modules and model factories."""
