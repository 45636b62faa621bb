"""Text in, tensors out: the built-in corpus, real corpora, tokenizers and vocabularies, batches."""
