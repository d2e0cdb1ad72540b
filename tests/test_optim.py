"""The optimizer: weight decay by parameter name on the real CodeGen parameter tree."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from codegen2_jax import optim
from codegen2_jax.models.codegen import CodeGen, ModelConfig

TINY = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, head_dim=8, rotary_dim=4,
            d_ff=64, max_len=32)


def _names(tree, keep):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {optim._leaf_name(path) for path, v in flat if keep(v)}


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decayed_parameters_are_the_embedding_and_projections(scan_layers):
  model = nnx.eval_shape(lambda: CodeGen(ModelConfig(**TINY, scan_layers=scan_layers),
                                         nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  mask = optim.decay_mask(params)
  decayed, kept = _names(mask, lambda v: v), _names(mask, lambda v: not v)
  assert decayed == {"embed", "q", "k", "v", "out", "fc_in", "fc_out", "lm_head"}
  assert kept == {"ln_scale", "ln_bias", "ln_f_scale", "ln_f_bias", "fc_in_bias",
                  "fc_out_bias", "lm_head_bias"}
  # The stacked [layers, d] LayerNorm and bias vectors are 2-D, yet not decayed.
  shapes = {optim._leaf_name(p): v.shape for p, v in
            jax.tree_util.tree_flatten_with_path(params)[0]}
  assert len(shapes["ln_scale"]) == 2 and len(shapes["fc_in_bias"]) == 2


def test_one_step_of_pure_weight_decay_shrinks_matrices_only():
  # The real parameter tree, filled with random values (an eager model init is slow on CPU).
  abstract = nnx.state(nnx.eval_shape(lambda: CodeGen(ModelConfig(**TINY), nnx.Rngs(0))),
                       nnx.Param)
  rng = np.random.RandomState(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.randn(*s.shape), s.dtype), abstract)
  tx = optim.make_optimizer(optax.constant_schedule(0.1), weight_decay=0.5, clip_norm=0.0)

  @jax.jit
  def step(params):  # zero gradients: Adam's part of the update is 0, only decay remains
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    return optax.apply_updates(params, updates)

  new = step(params)
  before = {optim._leaf_name(p): np.asarray(v) for p, v in
            jax.tree_util.tree_flatten_with_path(params)[0]}
  after = {optim._leaf_name(p): np.asarray(v) for p, v in
           jax.tree_util.tree_flatten_with_path(new)[0]}
  for name in optim.DECAYED:  # decoupled decay: p <- p - lr * wd * p
    np.testing.assert_allclose(after[name], before[name] * (1 - 0.1 * 0.5), rtol=1e-6)
  for name in optim.NOT_DECAYED:
    np.testing.assert_array_equal(after[name], before[name])


def test_an_unclassified_parameter_is_refused_naming_it():
  params = {"embed": jnp.ones((4, 2)), "gate": jnp.ones((2, 2)), "adapter_bias": jnp.ones(2)}
  tx = optim.make_optimizer(optax.constant_schedule(0.1))
  with pytest.raises(ValueError, match="parameter 'gate' is not classified"):
    tx.init(params)
  assert optim.decays("adapter_bias") is False and optim.decays("ln_new") is False
