"""Evaluation: held-out bits/dim (ELBO and importance-weighted bounds), sample quality with a judge trained
here, the GenEval-style `shapes` judge and its prompt-following mode, and a classical reference."""
