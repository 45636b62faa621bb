"""The pieces of ``python -m tformer`` (:mod:`tformer.__main__`): argument parsing and checks
(:mod:`.args`), the choice of a thread count (:mod:`.threads`), the translation files of
``evaluate --outputs`` and their comparison by ``compare`` (:mod:`.compare`)."""
