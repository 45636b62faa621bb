"""Applications built from the package: a Chinese→English translator, a character-level language model, a data-parallel demo."""
