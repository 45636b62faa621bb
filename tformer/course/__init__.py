"""For the book: plots, the architecture diagram and the exercise checkers."""
