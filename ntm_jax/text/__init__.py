"""Frozen pretrained text encoders: all-MiniLM-L6-v2 run by our own JAX BERT forward (ntm_jax.text.minilm)."""
