"""How faithful the shapes autoencoder is: reconstruction error, and the shapes judge on reconstructions.

  python benchmarks/autoencoder.py --autoencoder=workdirs/autoencoder_shapes

Held-out scenes (the first --num_scenes of the test split: `shapes_scenes.make_scenes(N, seed=2)`) are
encoded and decoded (1) as they are and (2) from latents with the noise augmentation a latent flow is
trained with (`latent.noise_std` in the flow's unit-scale latents, 0.1 in configs/t2i.py), which is what a
flow's samples look like to the decoder. The judge must still find every object, colour and position in
the reconstructions: the target is >= 0.98 overall, against 1.0 on the originals. Prints a table and writes
benchmarks/results/autoencoder.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository on sys.path)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ntm_jax import latents  # noqa: E402
from ntm_jax.data import dequantization  # noqa: E402
from ntm_jax.data.builders import shapes_scenes  # noqa: E402
from ntm_jax.evaluation import shapes_judge  # noqa: E402
from ntm_jax.sampling import images  # noqa: E402

TEST_SPLIT_SEED = 2  # ntm_jax.data.builders.shapes.SPLITS: the test split's scenes


def train_smoke_autoencoder(workdir: str) -> str:
  from ntm_jax.training import autoencoder  # noqa: PLC0415  (only the smoke run trains)
  config = common.load_config("autoencoder", "smoke")
  autoencoder.train_autoencoder(config, workdir)
  return workdir


def reconstructions(loaded: latents.LoadedAutoencoder, pixels_uint8: np.ndarray, noise_std: float, seed: int,
                    batch_size: int = 200) -> np.ndarray:
  """uint8 images decoded from the (noise-augmented, if `noise_std`) flow latents of `pixels_uint8`."""
  encode, decode = loaded.encode_fn(), loaded.decode_fn()
  out = []
  for i in range(0, len(pixels_uint8), batch_size):
    x = dequantization.bin_centres(pixels_uint8[i:i + batch_size], loaded.pixel_levels)
    z = encode(x)
    z = z + noise_std * jax.random.normal(jax.random.fold_in(jax.random.key(seed), i), z.shape)
    out.append(np.asarray(decode(z)))
  return images.to_uint8(np.concatenate(out), loaded.pixel_levels)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--autoencoder", default="workdirs/autoencoder_shapes", help="its training workdir")
  parser.add_argument("--num_scenes", type=int, default=600)
  parser.add_argument("--noise_std", type=float, default=0.1, help="the flow's latent.noise_std")
  parser.add_argument("--out", default=os.path.join(common.ROOT, "benchmarks", "results", "autoencoder.json"))
  parser.add_argument("--smoke", action="store_true", help="a 4-step autoencoder, 12 scenes")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    workdir = train_smoke_autoencoder(os.path.join(tmp, "ae")) if args.smoke else args.autoencoder
    num_scenes = 12 if args.smoke else args.num_scenes
    loaded = latents.load_autoencoder(workdir)
    scenes, prompts = shapes_scenes.make_scenes(num_scenes, TEST_SPLIT_SEED)
    rows = {"originals": scenes}
    start = time.perf_counter()
    rows["reconstructed"] = reconstructions(loaded, scenes, 0.0, 0)
    rows[f"from latents + {args.noise_std:g} noise"] = reconstructions(loaded, scenes, args.noise_std, 1)
    seconds = time.perf_counter() - start
    results = {"autoencoder": os.path.abspath(workdir), "step": loaded.step, "num_scenes": num_scenes,
               "latent_shape": list(loaded.latent_shape), "image_shape": list(loaded.image_shape),
               "noise_std": args.noise_std, "seconds_for_both_passes": seconds, "rows": {}}
    originals = scenes.astype(np.float64) / 127.5 - 1.0
    print(f"autoencoder step {loaded.step}: {loaded.image_shape} -> {loaded.latent_shape}, {num_scenes} held-out "
          "scenes")
    print(f"{'':>26} {'MSE [-1,1]':>11} {'PSNR dB':>8} " + " ".join(f"{c[:12]:>12}" for c in shapes_scenes.CATEGORIES)
          + f" {'judge':>6}")
    for name, row in rows.items():
      mse = float(np.mean((row.astype(np.float64) / 127.5 - 1.0 - originals) ** 2))
      scores = shapes_judge.score(row, prompts)
      psnr = 10 * np.log10(4.0 / mse) if mse > 0 else float("inf")
      results["rows"][name] = {"mse": mse, "psnr_db": psnr, "judge": scores}
      print(f"{name:>26} {mse:>11.6f} {psnr:>8.2f} " + " ".join(f"{scores[c]:>12.3f}"
                                                                for c in shapes_scenes.CATEGORIES)
            + f" {scores['overall']:>6.3f}")
    if args.smoke:
      images.save_grid_png(np.concatenate([scenes[:6], rows["reconstructed"][:6]]), os.path.join(tmp, "g.png"))
    else:
      grid = np.stack([scenes[:16], rows["reconstructed"][:16]], axis=1).reshape((-1,) + scenes.shape[1:])
      path = os.path.join(common.ROOT, "docs", "autoencoder_shapes_reconstructions.png")
      images.save_grid_png(grid, path, scale=4)
      print(f"wrote {path} (originals in odd columns, reconstructions beside them)")
  common.write_json(args.out, results)


if __name__ == "__main__":
  main()
