"""Closed-form curvature products for the paper's policy: a ReLU MLP mean with a learned,
state-independent log std (Finn et al. 2017, Sec. 5.3).

MAML-TRPO spends most of its time in two products per conjugate-gradient iteration, both at
fixed parameters: the inner loss's Hessian times a vector (twice) and the Gaussian policy's
Fisher times a vector. Autograd computes them by differentiating stored backward graphs, which
materialises many full-size intermediate tensors (and zero tensors for ReLU's mask). For a
Linear/ReLU stack they have a short closed form: cache the forward activations, ReLU masks
and backpropagated errors once, then each product is one forward tangent pass and one
(tangent) backward pass of batched matrix products over all tasks. The generic autograd path
in :mod:`mamlkit.rl.maml_trpo` computes the same quantities for any other policy; the tests
check both against each other and against finite differences.

Shapes: per-task parameters carry a leading task dim ``T``; observations are ``[T, M, obs]``.
"""

from __future__ import annotations

from torch import Tensor, nn

from mamlkit.rl.policy import GaussianMLPPolicy, Params

Layers = list[tuple[str, str]]


def mlp_layers(policy: nn.Module) -> Layers | None:
    """``[(weight_name, bias_name), ...]`` if ``policy`` is a :class:`GaussianMLPPolicy` whose
    mean is Linear, ReLU, ..., Linear (the closed forms apply); otherwise ``None``."""
    if not isinstance(policy, GaussianMLPPolicy) or not isinstance(policy.mean, nn.Sequential):
        return None
    modules = list(policy.mean)
    if len(modules) % 2 == 0:
        return None
    layers: Layers = []
    for i, module in enumerate(modules):
        if i % 2 == 0:
            if not isinstance(module, nn.Linear) or module.bias is None:
                return None
            layers.append((f"mean.{i}.weight", f"mean.{i}.bias"))
        elif type(module) is not nn.ReLU:
            return None
    return layers


class MLPForward:
    """Cached forward pass of a per-task ReLU MLP: inputs of every layer and ReLU masks."""

    def __init__(self, layers: Layers, params: Params, observations: Tensor) -> None:
        self.layers = layers
        self.weights = [params[w] for w, _ in layers]
        self.inputs: list[Tensor] = [observations]
        self.masks: list[Tensor] = []
        h = observations
        for i, (weight, bias) in enumerate(zip(self.weights, [params[b] for _, b in layers])):
            z = bias.unsqueeze(1).baddbmm(h, weight.transpose(1, 2))
            if i < len(layers) - 1:
                mask = (z > 0).to(z.dtype)
                h = z * mask
                self.masks.append(mask)
                self.inputs.append(h)
            else:
                self.output = z

    def tangent(self, d_weights: list[Tensor], d_biases: list[Tensor]) -> tuple[list, Tensor]:
        """Forward-mode pass: tangents of each layer's input (``None`` for the observations)
        and of the output, for parameter tangents ``d_weights``/``d_biases``."""
        d_inputs: list[Tensor | None] = [None]
        d_z = self.inputs[0]
        for i, weight in enumerate(self.weights):
            d_z = self.inputs[i].bmm(d_weights[i].transpose(1, 2))
            d_z.add_(d_biases[i].unsqueeze(1))
            if d_inputs[i] is not None:
                d_z.baddbmm_(d_inputs[i], weight.transpose(1, 2))
            if i < len(self.weights) - 1:
                d_inputs.append(d_z.mul_(self.masks[i]))
        return d_inputs, d_z

    def backward(self, d_output: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Reverse pass of ``d_output`` (gradient w.r.t. the output): per-layer errors
        ``delta_l`` (w.r.t. pre-activations), weight and bias gradients."""
        count = len(self.weights)
        deltas: list[Tensor] = [d_output] * count
        grads_w: list[Tensor] = [d_output] * count
        grads_b: list[Tensor] = [d_output] * count
        delta = d_output
        for i in range(count - 1, -1, -1):
            deltas[i] = delta
            grads_w[i] = delta.transpose(1, 2).bmm(self.inputs[i])
            grads_b[i] = delta.sum(1)
            if i > 0:
                delta = delta.bmm(self.weights[i]).mul_(self.masks[i - 1])
        return deltas, grads_w, grads_b

    def backward_tangent(
        self,
        deltas: list[Tensor],
        d_delta_out: Tensor,
        d_weights: list[Tensor],
        d_inputs: list[Tensor | None],
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Tangent of :meth:`backward`'s weight/bias gradients when the parameters move along
        ``d_weights`` (with forward tangents ``d_inputs``) and the output error along
        ``d_delta_out``; ``deltas`` are the primal errors from :meth:`backward`."""
        count = len(self.weights)
        d_grads_w: list[Tensor] = [d_delta_out] * count
        d_grads_b: list[Tensor] = [d_delta_out] * count
        d_delta = d_delta_out
        for i in range(count - 1, -1, -1):
            d_gw = d_delta.transpose(1, 2).bmm(self.inputs[i])
            if d_inputs[i] is not None:
                d_gw.baddbmm_(deltas[i].transpose(1, 2), d_inputs[i])
            d_grads_w[i] = d_gw
            d_grads_b[i] = d_delta.sum(1)
            if i > 0:
                back = d_delta.bmm(self.weights[i])
                d_delta = back.baddbmm_(deltas[i], d_weights[i]).mul_(self.masks[i - 1])
        return d_grads_w, d_grads_b


def _split(layers: Layers, vectors: Params) -> tuple[list[Tensor], list[Tensor], Tensor]:
    return ([vectors[w] for w, _ in layers], [vectors[b] for _, b in layers], vectors["log_std"])


def _join(layers: Layers, grads_w: list, grads_b: list, grad_log_std: Tensor) -> Params:
    out: Params = {}
    for (w, b), gw, gb in zip(layers, grads_w, grads_b):
        out[w], out[b] = gw, gb
    out["log_std"] = grad_log_std
    return out


class InnerLossCurvature:
    """Hessian-vector products of the inner REINFORCE loss ``sum_n w_n (-log pi(a_n|s_n))``
    per task, with ``w_n = A_n mask_n / count`` (the weights of
    :func:`mamlkit.rl.losses.reinforce_loss`)."""

    def __init__(
        self, layers: Layers, params: Params, observations: Tensor, actions: Tensor,
        weights: Tensor,
    ) -> None:
        self.layers = layers
        self.net = MLPForward(layers, params, observations)
        self.error = actions - self.net.output                       # a - mu, [T, M, A]
        self.precision = (-2.0 * params["log_std"]).exp().unsqueeze(1)  # [T, 1, A]
        self.weights = weights.unsqueeze(-1)                         # [T, M, 1]
        delta_out = -self.weights * self.error * self.precision
        self.deltas, _, _ = self.net.backward(delta_out)

    def hvp(self, vectors: Params) -> Params:
        """Per-task ``H v`` for per-task direction ``v`` (a dict shaped like the params)."""
        d_w, d_b, d_log_std = _split(self.layers, vectors)
        d_inputs, d_mean = self.net.tangent(d_w, d_b)
        scaled = self.weights * self.precision
        d_delta = scaled * (d_mean + 2.0 * self.error * d_log_std.unsqueeze(1))
        d_gw, d_gb = self.net.backward_tangent(self.deltas, d_delta, d_w, d_inputs)
        d_gs = (2.0 * scaled * self.error * (d_mean + self.error * d_log_std.unsqueeze(1))).sum(1)
        return _join(self.layers, d_gw, d_gb, d_gs)


class GaussianFisher:
    """Fisher-vector products ``F v`` of the diagonal-Gaussian policy: the Hessian of
    ``sum_n w_n KL(pi_old(.|s_n) || pi(.|s_n))`` at ``pi = pi_old``, which is
    ``1/sigma^2`` on the mean and 2 on the log std per weighted step."""

    def __init__(
        self, layers: Layers, params: Params, observations: Tensor, weights: Tensor
    ) -> None:
        self.layers = layers
        self.net = MLPForward(layers, params, observations)
        precision = (-2.0 * params["log_std"]).exp().unsqueeze(1)
        self.mean_weights = weights.unsqueeze(-1) * precision         # [T, M, A]
        self.log_std_weights = 2.0 * weights.sum(1, keepdim=True)     # [T, 1]

    def fvp(self, vectors: Params) -> Params:
        """Per-task ``F v``."""
        d_w, d_b, d_log_std = _split(self.layers, vectors)
        _, d_mean = self.net.tangent(d_w, d_b)
        _, grads_w, grads_b = self.net.backward(self.mean_weights * d_mean)
        return _join(self.layers, grads_w, grads_b, self.log_std_weights * d_log_std)
