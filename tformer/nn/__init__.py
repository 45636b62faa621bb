"""The networks: attention, positions, layers, and the models built from them (encoder–decoder, GPT, BERT)."""
