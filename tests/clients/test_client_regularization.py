"""The default regularization rule on the trees of real libraries: flax linen, flax nnx (through
nnx.Optimizer and through nnx.split / nnx.state), equinox, mpneuralnetwork and plain dicts.

Oracle: with a zero gradient and 'L2', sgd's update is exactly ``-lr * wd * w`` on a decayed leaf and 0
on any other; which leaves should be decayed is written out by hand for each model (weights, kernels
and embeddings yes; biases and normalization scales and offsets no).
"""

from __future__ import annotations

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import mpnn_opt

LR, WD = 0.1, 0.5


def _moved_leaves(params) -> dict[str, bool]:
    """keystr(path) -> whether sgd with 'L2' moved the leaf under a zero gradient, checked against -lr*wd*w."""
    tx = mpnn_opt.sgd(LR, "L2", WD, momentum=0.0)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    moved = {}
    for (path, update), param in zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(params)):
        decayed = bool(jnp.any(update != 0))
        expected = -LR * WD * np.asarray(param) if decayed else np.zeros(np.shape(param))
        np.testing.assert_allclose(np.asarray(update), expected, rtol=1e-6)
        moved[jax.tree_util.keystr(path)] = decayed
    return moved


class LinenModel(nn.Module):
    @nn.compact
    def __call__(self, x, tokens):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=False)(x)
        x = nn.Dense(5)(x.reshape(x.shape[0], -1))
        x = nn.LayerNorm()(x)
        return x + nn.Embed(7, 5)(tokens).sum(axis=1)


def test_flax_linen_decays_kernels_and_embeddings_but_not_biases_or_norm_scales():
    variables = LinenModel().init(jax.random.key(0), jnp.ones((2, 6, 6, 1)), jnp.zeros((2, 3), jnp.int32))
    moved = _moved_leaves(variables["params"])
    assert moved == {
        "['BatchNorm_0']['bias']": False,
        "['BatchNorm_0']['scale']": False,
        "['Conv_0']['bias']": False,
        "['Conv_0']['kernel']": True,
        "['Dense_0']['bias']": False,
        "['Dense_0']['kernel']": True,
        "['Embed_0']['embedding']": True,
        "['LayerNorm_0']['bias']": False,
        "['LayerNorm_0']['scale']": False,
    }


class NnxModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.batch_norm = nnx.BatchNorm(4, rngs=rngs)
        self.linear = nnx.Linear(144, 5, rngs=rngs)
        self.layer_norm = nnx.LayerNorm(5, rngs=rngs)
        self.rms_norm = nnx.RMSNorm(5, rngs=rngs)
        self.embed = nnx.Embed(7, 5, rngs=rngs)

    def __call__(self, x, tokens):
        x = self.batch_norm(self.conv(x))
        x = self.rms_norm(self.layer_norm(self.linear(x.reshape(x.shape[0], -1))))
        return x + self.embed(tokens).sum(axis=1)


NNX_EXPECTED = {
    "['batch_norm']['bias']": False,
    "['batch_norm']['scale']": False,
    "['conv']['bias']": False,
    "['conv']['kernel']": True,
    "['embed']['embedding']": True,
    "['layer_norm']['bias']": False,
    "['layer_norm']['scale']": False,
    "['linear']['bias']": False,
    "['linear']['kernel']": True,
    "['rms_norm']['scale']": False,
}


def test_flax_nnx_through_nnx_optimizer_decays_the_same_leaves():
    model = NnxModel(nnx.Rngs(0))
    before = nnx.as_pure(nnx.state(model, nnx.Param))
    optimizer = nnx.Optimizer(model, mpnn_opt.sgd(LR, "L2", WD, momentum=0.0), wrt=nnx.Param)
    optimizer.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
    after = nnx.as_pure(nnx.state(model, nnx.Param))
    moved = {}
    for (path, new), old in zip(jax.tree_util.tree_leaves_with_path(after), jax.tree.leaves(before)):
        decayed = bool(jnp.any(new != old))
        expected = np.asarray(old) * (1 - LR * WD) if decayed else np.asarray(old)
        np.testing.assert_allclose(np.asarray(new), expected, rtol=1e-6)
        moved[jax.tree_util.keystr(path)] = decayed
    assert moved == NNX_EXPECTED


def test_flax_nnx_through_split_and_state_where_paths_end_in_value_decays_the_same_leaves():
    model = NnxModel(nnx.Rngs(0))
    _, params, _ = nnx.split(model, nnx.Param, ...)
    moved = _moved_leaves(params)  # paths such as ['linear']['bias'].value
    assert {key.removesuffix(".value"): value for key, value in moved.items()} == NNX_EXPECTED
    assert all(key.endswith(".value") for key in moved)
    assert (
        _moved_leaves(nnx.state(model, nnx.Param)).values()
        and {key.removesuffix(".value"): value for key, value in _moved_leaves(nnx.state(model, nnx.Param)).items()}
        == NNX_EXPECTED
    )


class EqxModel(eqx.Module):
    conv: eqx.nn.Conv2d
    linear: eqx.nn.Linear
    layer_norm: eqx.nn.LayerNorm
    group_norm: eqx.nn.GroupNorm
    embedding: eqx.nn.Embedding

    def __init__(self, key):
        keys = jax.random.split(key, 3)
        self.conv = eqx.nn.Conv2d(1, 4, 3, key=keys[0])
        self.linear = eqx.nn.Linear(16, 5, key=keys[1])
        self.layer_norm = eqx.nn.LayerNorm(5)
        self.group_norm = eqx.nn.GroupNorm(2, 4)
        self.embedding = eqx.nn.Embedding(7, 5, key=keys[2])


def test_equinox_decays_weights_and_embeddings_but_not_biases_or_layer_norm_weights():
    params = eqx.filter(EqxModel(jax.random.key(0)), eqx.is_array)
    moved = _moved_leaves(params)
    assert moved == {
        ".conv.weight": True,
        ".conv.bias": False,
        ".linear.weight": True,
        ".linear.bias": False,
        ".layer_norm.weight": False,
        ".layer_norm.bias": False,
        ".group_norm.weight": False,
        ".group_norm.bias": False,
        ".embedding.weight": True,
    }


def test_the_seeds_own_layers_and_plain_dicts_keep_the_seeds_rule():
    from mpneuralnetwork.activations import ReLU
    from mpneuralnetwork.layers import BatchNormalization, Convolutional, Dense, Flatten
    from mpneuralnetwork.losses import MSE
    from mpneuralnetwork.model import Model
    from mpneuralnetwork.optimizers import SGD

    layers = [Convolutional(2, 3, input_shape=(1, 6, 6)), ReLU(), Flatten(), Dense(12), BatchNormalization(), Dense(3)]
    Model(layers, MSE(), optimizer=SGD())  # builds the layers' parameters
    params = {
        f"layer_{i}": {name: np.asarray(param) for name, (param, _) in layer.params.items()}
        for i, layer in enumerate(layers)
        if hasattr(layer, "params") and layer.params
    }
    moved = _moved_leaves(params)
    # the seed regularizes unless the name contains bias, beta or gamma (mpneuralnetwork.optimizers.apply_regularization)
    for key, decayed in moved.items():
        name = key.rsplit("[", 1)[1].strip("[]'")
        assert decayed == (not any(part in name for part in ("bias", "beta", "gamma"))), key
    assert moved["['layer_0']['kernels']"] and moved["['layer_3']['weights']"] and not moved["['layer_4']['gamma']"]
    assert _moved_leaves({"dense": {"w": jnp.ones((3, 2)), "b": jnp.ones(2), "scale": jnp.ones((2, 2))}}) == {
        "['dense']['b']": False,  # a vector: a bias or a scale whatever its name
        "['dense']['scale']": False,  # a normalization scale by name
        "['dense']['w']": True,
    }
