"""Data: TFDS builders of the embedded data sets (ntm_jax.data.builders), the grain input pipeline, text
features per example, and the dequantisation that turns K-level images into continuous data (D7)."""

from ntm_jax.data.pipeline import (EMBEDDED_BUILDERS, DataSource, check_batch_size, check_matches_config,
                                   default_data_dir, eval_batches, load_builder, load_directory_split,
                                   load_model_split, load_split, split_of_builder, train_iterator,
                                   with_text_features)

__all__ = ["EMBEDDED_BUILDERS", "DataSource", "check_batch_size", "check_matches_config", "default_data_dir",
           "eval_batches", "load_builder", "load_directory_split", "load_model_split", "load_split",
           "split_of_builder", "train_iterator", "with_text_features"]
