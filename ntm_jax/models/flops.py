"""Model FLOPs counted from the architecture: what the compile report's MFU and the sampler rows rest on.

XLA's cost analysis counts what the compiled program does: masked attention scores, remat recompute, and a
loop body once however many times it runs (a sampler's 255-token inversion counts as one token). These
counts are the model's work instead: the weight matmuls of every Transformer stack with their input and
output projections (2 FLOPs per multiply-add), and attention (QK^T and AV) only over the (query, key) pairs
its mask allows. Norms, embeddings and elementwise work are left out (they are a few percent at any width
here). A KV-cached decoding step counts its new queries against the keys it may see, so a sequential
inversion and its Jacobi iterations are counted loop iteration by loop iteration.
"""

from __future__ import annotations


def causal_pairs(num_tokens: int) -> int:
  """(query, key) pairs of a causal mask over `num_tokens`: N (N + 1) / 2."""
  return num_tokens * (num_tokens + 1) // 2


def block_causal_pairs(num_blocks: int, block_size: int, *, within_block_only: bool = False) -> int:
  """Pairs of `attention.Mask.block_causal`: block b sees blocks <= b (or only itself)."""
  if within_block_only:
    return num_blocks * block_size ** 2
  return block_size ** 2 * num_blocks * (num_blocks + 1) // 2


def stack(width: int, mlp_ratio: int, depth: int, queries: int, pairs: int, in_dim: int = 0,
          out_dim: int = 0) -> float:
  """FLOPs of `queries` tokens through `depth` layers attending over `pairs` (query, key) pairs in all, with a
  token projection in (`in_dim` -> width) and out (width -> `out_dim`)."""
  weights_per_token = depth * (4 + 2 * mlp_ratio) * width ** 2 + width * (in_dim + out_dim)  # multiply-adds
  attention = depth * 2 * width * pairs  # QK^T and AV: `width` multiply-adds each per pair
  return 2.0 * (queries * weights_per_token + attention)


def flow_block_pass(cfg, num_tokens: int, token_dim: int, *, queries: int | None = None,
                    pairs: int | None = None) -> float:
  """One TarFlow block (a `TransporterConfig`): a full causal pass by default."""
  queries = num_tokens if queries is None else queries
  pairs = causal_pairs(num_tokens) if pairs is None else pairs
  return stack(cfg.width, cfg.mlp_ratio, cfg.layers_per_block, queries, pairs, token_dim, 2 * token_dim)


def flow_forward(cfg, num_tokens: int, token_dim: int) -> float:
  """f_T (or the TarFlow baseline) forward over one image: every block, one causal pass each."""
  return cfg.num_blocks * flow_block_pass(cfg, num_tokens, token_dim)


def flow_inverse(cfg, num_tokens: int, token_dim: int, method: str = "sequential",
                 jacobi_iterations: int | None = None) -> float:
  """Inverting every block of a flow over one image. Token by token: N - 1 KV-cached one-token steps per
  block, token i seeing i + 1 keys; Jacobi: `jacobi_iterations` full causal passes in all (over every block;
  default the cap, N - 1 a block)."""
  if method == "jacobi":
    iterations = cfg.num_blocks * (num_tokens - 1) if jacobi_iterations is None else jacobi_iterations
    return iterations * flow_block_pass(cfg, num_tokens, token_dim)
  steps = num_tokens - 1
  return cfg.num_blocks * flow_block_pass(cfg, num_tokens, token_dim, queries=steps, pairs=causal_pairs(steps))


def predictor_pairs(num_levels: int, num_tokens: int, prefix: int, *, markov: bool = False) -> int:
  """Pairs of the predictor's mask: block-causal levels (each level alone for the Markov ablation) that also
  see the prefix, a prefix that sees itself."""
  return (block_causal_pairs(num_levels, num_tokens, within_block_only=markov) + num_levels * num_tokens * prefix
          + prefix ** 2)


def predictor_pass(cfg, num_tokens: int, token_dim: int, num_levels: int) -> float:
  """The trajectory predictor (a `PredictorConfig`) over `num_levels` levels and the text prefix (all of its
  tokens counted as real)."""
  prefix = cfg.text_tokens if cfg.text_dim else 0
  level_tokens = num_levels * num_tokens
  pairs = predictor_pairs(num_levels, num_tokens, prefix, markov=cfg.markov)
  projections = stack(cfg.width, cfg.mlp_ratio, 0, level_tokens, 0, token_dim, 2 * token_dim)
  text_projection = 2.0 * prefix * cfg.text_dim * cfg.width
  return stack(cfg.width, cfg.mlp_ratio, cfg.depth, level_tokens + prefix, pairs) + projections + text_projection


def denoiser_pass(cfg, num_tokens: int, token_dim: int) -> float:
  """The distilled denoiser (a `DenoiserConfig`): one pass, full attention over the tokens."""
  return stack(cfg.width, cfg.mlp_ratio, cfg.depth, num_tokens, num_tokens ** 2, token_dim, token_dim)


def forward_backward(forward_flops: float) -> float:
  """A training step's FLOPs from its forward pass: the backward pass costs twice the forward matmuls."""
  return 3.0 * forward_flops
