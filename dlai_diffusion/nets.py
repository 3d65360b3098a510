"""Small networks used across the course: conditioning embeddings, an MLP for 2D data,
a U-Net for 28x28 and 32x32 images and energy networks.

Every model is a callable ``net(x, t)`` whose output has the shape of ``x`` (energy models
return one number per sample). What ``t`` means is up to the caller:

===========================================  ===================================================
what conditions the model                    how to feed it
===========================================  ===================================================
DDPM step t in 0..T-1 (integer)              ``embedding="sinusoidal"``, ``time_scale=1``
continuous time t in [0, 1] (SDEs, flows)    ``embedding="sinusoidal"``, ``time_scale=1000``,
                                             or ``embedding="fourier"``
noise level sigma (NCSN, VE SDE)             pass ``log(sigma)`` with ``embedding="fourier"``
                                             (Song et al., 2021), or an index with ``norm="cin"``
nothing (score matching, EBMs)               ``ScoreMLP(cond=False)``, ``EnergyMLP``, ``EnergyCNN``
===========================================  ===================================================

Weights are initialised with PyTorch's global RNG (as ``nn.Linear`` does): seed it with
:func:`dlai_diffusion.seed_everything` for reproducible models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "sinusoidal_embedding",
    "SinusoidalEmbedding",
    "GaussianFourierFeatures",
    "TimeEmbedding",
    "ScoreMLP",
    "EnergyMLP",
    "ConditionalInstanceNorm2dPlus",
    "UNet",
    "UNET_PRESETS",
    "unet",
    "EnergyCNN",
    "count_parameters",
]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]()


def _positive_int(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) scalar parameters of ``module``."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------
# Conditioning: scalar t or sigma -> feature vector
# --------------------------------------------------------------------------------------


def _batch_vector(value, n: int, name: str, device: torch.device) -> Tensor:
    """Turn a scalar or a tensor with ``n`` entries ((N,), (N, 1), (N, 1, 1, 1)...) into (N,)."""
    value = torch.as_tensor(value, device=device)
    if value.numel() == 1:
        return value.reshape(1).expand(n)
    if value.numel() != n:
        raise ValueError(
            f"{name} must be a scalar or hold one value per sample ({n}), "
            f"got shape {tuple(value.shape)}"
        )
    return value.reshape(n)


def _check_index(index: Tensor, upper: int, name: str) -> Tensor:
    """``index`` must be an integer tensor with values in 0..upper-1."""
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer indices, got dtype {index.dtype}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= upper):
        raise ValueError(f"{name} must lie in 0..{upper - 1}, got values outside that range")
    return index.long()


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of a scalar per sample (Vaswani et al., 2017; Ho et al., 2020).

    Returns ``[sin(t w_0), ..., sin(t w_{h-1}), cos(t w_0), ..., cos(t w_{h-1})]`` with
    ``h = dim // 2`` frequencies ``w_k = max_period ** (-k / h)`` from 1 down to nearly
    ``1 / max_period`` (a zero column is appended when ``dim`` is odd). Shape: ``t`` (N,) or
    scalar -> (N, dim) (a scalar gives N = 1). Computed in float32 (float64 for float64
    input) because arguments reach ``t`` itself, which bf16 would round badly. The
    frequencies suit inputs spread over 0..1000, such as DDPM steps.
    """
    dim = _positive_int(dim, "dim")
    t = torch.as_tensor(t)
    if t.dim() > 1:
        raise ValueError(f"t must be a scalar or of shape (N,), got shape {tuple(t.shape)}")
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    t = t.reshape(-1).to(dtype)
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / max(half, 1)
    )
    args = t[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class SinusoidalEmbedding(nn.Module):
    """Module form of :func:`sinusoidal_embedding`: (N,) -> (N, dim); no parameters."""

    def __init__(self, dim: int, max_period: float = 10_000.0):
        super().__init__()
        self.dim = _positive_int(dim, "dim")
        self.max_period = float(max_period)

    def forward(self, t: Tensor) -> Tensor:
        return sinusoidal_embedding(t, self.dim, self.max_period)


class GaussianFourierFeatures(nn.Module):
    """Random Fourier features ``[sin(2 pi t W), cos(2 pi t W)]`` with fixed ``W ~ N(0, scale^2)``
    (Tancik et al., 2020), the noise-level embedding of Song et al. (2021), who feed
    ``log(sigma)``. ``W`` is a saved buffer, not a trained parameter. (N,) -> (N, dim).
    """

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        dim = _positive_int(dim, "dim")
        if dim % 2:
            raise ValueError(f"dim must be even for Fourier features, got {dim}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.dim = dim
        self.register_buffer("weight", torch.randn(dim // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=self.weight.device).reshape(-1)
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        args = 2 * math.pi * t.to(dtype)[:, None] * self.weight.to(dtype)[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class TimeEmbedding(nn.Module):
    """Conditioning vector: features of ``time_scale * t`` followed by Linear-SiLU-Linear.

    ``kind="sinusoidal"`` (Ho et al., 2020) or ``"fourier"`` (Song et al., 2021). (N,) -> (N, dim).
    """

    def __init__(
        self,
        dim: int,
        *,
        kind: str = "sinusoidal",
        feature_dim: int | None = None,
        time_scale: float = 1.0,
        fourier_scale: float = 16.0,
    ):
        super().__init__()
        dim = _positive_int(dim, "dim")
        feature_dim = dim if feature_dim is None else _positive_int(feature_dim, "feature_dim")
        if kind == "sinusoidal":
            self.features = SinusoidalEmbedding(feature_dim)
        elif kind == "fourier":
            self.features = GaussianFourierFeatures(feature_dim + feature_dim % 2, fourier_scale)
            feature_dim += feature_dim % 2
        else:
            raise ValueError(f"embedding must be 'sinusoidal' or 'fourier', got {kind!r}")
        self.time_scale = float(time_scale)
        self.mlp = nn.Sequential(nn.Linear(feature_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        features = self.features(t * self.time_scale)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class _LabelEmbedding(nn.Embedding):
    """Class label -> vector, with an extra "null" label ``n_classes`` for classifier-free
    guidance (Ho & Salimans, 2021); ``y=None`` means the null label for every sample."""

    def __init__(self, n_classes: int, dim: int):
        super().__init__(_positive_int(n_classes, "n_classes") + 1, dim)
        self.n_classes = n_classes

    def forward(self, y: Tensor | None, n: int) -> Tensor:
        device = self.weight.device
        if y is None:
            y = torch.full((n,), self.n_classes, dtype=torch.long, device=device)
        y = _check_index(_batch_vector(y, n, "y", device), self.n_classes + 1, "y")
        return super().forward(y)


# --------------------------------------------------------------------------------------
# 2D (any dimension) data
# --------------------------------------------------------------------------------------


class ScoreMLP(nn.Module):
    """MLP for vectors: ``net(x, t)`` with x (N, dim), t scalar or (N,) -> (N, out_dim).

    ``depth`` hidden layers of width ``hidden``; each hidden layer receives the time
    embedding (and the label embedding when ``n_classes`` is set) added to its
    pre-activation. With ``cond=False`` the network ignores ``t`` and ``net(x)`` works: an
    unconditional score or energy model for score matching and EBMs. The default SiLU
    (and softplus, tanh, gelu, elu) is smooth, so the Jacobian trace of exact score
    matching (Hyvärinen, 2005) can be differentiated once more; ReLU cannot (its second
    derivative is zero).

    ``out_dim`` defaults to ``dim`` (a score, noise or velocity); ``out_dim=1`` makes an
    energy (see :class:`EnergyMLP`). Labels: ``y`` (N,) in 0..n_classes, where
    ``n_classes`` (or ``y=None``) is the null label of classifier-free guidance.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        *,
        out_dim: int | None = None,
        cond: bool = True,
        emb_dim: int = 64,
        embedding: str = "sinusoidal",
        time_scale: float = 1.0,
        activation: str = "silu",
        n_classes: int | None = None,
    ):
        super().__init__()
        self.dim = _positive_int(dim, "dim")
        hidden = _positive_int(hidden, "hidden")
        depth = _positive_int(depth, "depth")
        self.out_dim = self.dim if out_dim is None else _positive_int(out_dim, "out_dim")
        self.cond = bool(cond)
        self.act = _activation(activation)
        widths = [self.dim] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.out = nn.Linear(hidden, self.out_dim)
        self.time_embedding = None
        self.label_embedding = None
        self.cond_proj = None
        if self.cond:
            self.time_embedding = TimeEmbedding(emb_dim, kind=embedding, time_scale=time_scale)
            self.cond_proj = nn.ModuleList(nn.Linear(emb_dim, hidden) for _ in range(depth))
        if n_classes is not None:
            if not self.cond:
                raise ValueError("n_classes requires cond=True")
            self.label_embedding = _LabelEmbedding(n_classes, emb_dim)

    def forward(self, x: Tensor, t: Tensor | float | None = None, y: Tensor | None = None):
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (N, {self.dim}), got {tuple(x.shape)}")
        emb = None
        if self.cond:
            if t is None:
                raise TypeError("t is required: this ScoreMLP was built with cond=True")
            t = _batch_vector(t, x.shape[0], "t", x.device)
            emb = self.time_embedding(t.to(x.dtype) if t.is_floating_point() else t)
            if self.label_embedding is not None:
                emb = emb + self.label_embedding(y, x.shape[0])
            emb = F.silu(emb)
        elif y is not None:
            raise ValueError("y was given but this ScoreMLP has no n_classes")
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if emb is not None:
                h = h + self.cond_proj[i](emb)
            h = self.act(h)
        return self.out(h)


class EnergyMLP(nn.Module):
    """Scalar energy of vectors: ``E(x)`` with x (N, dim) -> (N,) (notes Eq. 1).

    A :class:`ScoreMLP` with ``out_dim=1`` and, by default, no conditioning; keyword
    arguments go to it (``cond=True`` gives ``E(x, t)``).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, **kwargs):
        super().__init__()
        kwargs.setdefault("cond", False)
        self.net = ScoreMLP(dim, hidden, depth, out_dim=1, **kwargs)

    def forward(self, x: Tensor, t: Tensor | float | None = None) -> Tensor:
        return self.net(x, t).squeeze(1)


# --------------------------------------------------------------------------------------
# U-Net for images
# --------------------------------------------------------------------------------------


class ConditionalInstanceNorm2dPlus(nn.Module):
    """Conditional instance normalisation++ of NCSN (Song & Ermon, 2019):

        z_k = gamma[i, k] (x_k - mu_k) / s_k + beta[i, k] + alpha[i, k] (mu_k - m) / v

    where mu_k, s_k are the spatial mean and standard deviation of channel k, m and v the
    mean and standard deviation of the mu_k over channels, and i the noise-level index.
    ``forward(x, index)`` with x (N, C, H, W), index (N,) long in 0..n_cond-1.
    """

    def __init__(self, channels: int, n_cond: int, eps: float = 1e-5):
        super().__init__()
        self.channels = _positive_int(channels, "channels")
        self.n_cond = _positive_int(n_cond, "n_cond")
        self.eps = eps
        self.embed = nn.Embedding(n_cond, 3 * channels)
        with torch.no_grad():
            self.embed.weight[:, : 2 * channels].normal_(1.0, 0.02)  # gamma and alpha near 1
            self.embed.weight[:, 2 * channels :].zero_()  # beta

    def forward(self, x: Tensor, index: Tensor) -> Tensor:
        mu = x.mean(dim=(2, 3), keepdim=True)
        var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
        m = mu.mean(dim=1, keepdim=True)
        v = mu.var(dim=1, keepdim=True, unbiased=False)
        gamma, alpha, beta = self.embed(index)[:, :, None, None].chunk(3, dim=1)
        normalised = (x - mu) * torch.rsqrt(var + self.eps)
        return gamma * normalised + beta + alpha * (mu - m) * torch.rsqrt(v + self.eps)


class _Norm(nn.Module):
    """GroupNorm (ignores the conditioning) or CIN++ (uses the noise index)."""

    def __init__(self, channels: int, norm: str, groups: int, n_cond: int | None):
        super().__init__()
        if norm == "group":
            self.norm = nn.GroupNorm(math.gcd(channels, groups), channels)
        else:
            self.norm = ConditionalInstanceNorm2dPlus(channels, n_cond)
        self.conditional = norm == "cin"

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.norm(x, cond) if self.conditional else self.norm(x)


class _ResBlock(nn.Module):
    """norm-SiLU-conv, + embedding, norm-SiLU-dropout-conv, plus a (1x1) skip (He et al., 2016;
    Ho et al., 2020)."""

    def __init__(self, c_in, c_out, *, emb_dim, norm, groups, n_cond, dropout):
        super().__init__()
        self.norm1 = _Norm(c_in, norm, groups, n_cond)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out) if emb_dim else None
        self.norm2 = _Norm(c_out, norm, groups, n_cond)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x, cond)))
        if self.emb is not None:
            h = h + self.emb(cond)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h, cond))))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Multi-head self-attention over pixels with a residual connection (Vaswani et al., 2017)."""

    def __init__(self, channels, *, heads, norm, groups, n_cond):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attn_heads={heads} must divide the channel count {channels}")
        self.heads = heads
        self.norm = _Norm(channels, norm, groups, n_cond)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x, cond)).reshape(n, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (N, heads, HW, C / heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class _Stage(nn.ModuleList):
    """Residual blocks (and attention) applied in turn with the same conditioning."""

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        for block in self:
            h = block(h, cond)
        return h


class _Downsample(nn.Conv2d):
    """Stride-2 3x3 convolution: 28 -> 14 -> 7 -> 4, 32 -> 16 -> 8 -> 4."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, stride=2, padding=1)


class _Upsample(nn.Module):
    """Nearest-neighbour upsampling to the size of the matching skip, then a 3x3 convolution;
    resizing to the skip (rather than by 2) lets odd sizes such as 7 -> 4 -> 7 round-trip."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size) -> Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    """U-Net noise/score model for images (Ronneberger et al., 2015; Ho et al., 2020):
    ``net(x, t, y=None)`` with x (N, C, H, W) -> (N, C, H, W).

    Levels ``channel_mults`` (resolution halves between levels: 28 -> 14 -> 7, 32 -> 16 -> 8),
    ``num_res_blocks`` residual blocks per level with GroupNorm and SiLU, skip connections
    from the down path to the up path, self-attention at the levels ``attn_levels``
    (negative indices count from the lowest resolution) and, if ``mid_attn``, in the
    middle. See :func:`unet` for ready-made sizes.

    Conditioning, chosen by ``norm``:

    * ``"group"`` (default): ``t`` is a float (or integer) tensor (N,) or a scalar; its
      embedding (:class:`TimeEmbedding`, ``embedding``, ``time_scale``) is added in every
      residual block. With ``n_classes`` a label embedding is added too; ``y`` (N,) takes
      values in 0..n_classes, where ``n_classes`` (and ``y=None``) is the null label of
      classifier-free guidance (Ho & Salimans, 2021).
    * ``"cin"``: NCSN's conditional instance norm++ replaces every normalisation (Song &
      Ermon, 2019); ``t`` is the noise-level index (N,) long in 0..n_cond-1 and there is no
      time embedding. Dividing the output by sigma, as NCSN does, is left to the caller.

    Works in channels-last memory format; any H, W >= 2**(len(channel_mults)-1) is accepted
    unless ``image_size`` fixes it.
    """

    def __init__(
        self,
        in_channels: int = 1,
        *,
        image_size: int | None = None,
        channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_levels: Sequence[int] = (),
        mid_attn: bool = True,
        attn_heads: int = 1,
        dropout: float = 0.0,
        groups: int = 8,
        n_classes: int | None = None,
        norm: str = "group",
        n_cond: int | None = None,
        embedding: str = "sinusoidal",
        time_scale: float = 1.0,
        out_channels: int | None = None,
    ):
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = (
            self.in_channels
            if out_channels is None
            else _positive_int(out_channels, "out_channels")
        )
        self.image_size = None if image_size is None else _positive_int(image_size, "image_size")
        channels = _positive_int(channels, "channels")
        mults = [_positive_int(m, "channel_mults entries") for m in channel_mults]
        if not mults:
            raise ValueError("channel_mults must name at least one level")
        num_res_blocks = _positive_int(num_res_blocks, "num_res_blocks")
        levels = len(mults)
        attn = set()
        for level in attn_levels:
            if not -levels <= level < levels:
                raise ValueError(f"attn_levels entries must lie in -{levels}..{levels - 1}")
            attn.add(level % levels)
        if norm not in ("group", "cin"):
            raise ValueError(f"norm must be 'group' or 'cin', got {norm!r}")
        if norm == "cin":
            if n_cond is None:
                raise ValueError("norm='cin' needs n_cond, the number of noise levels")
            if n_classes is not None:
                raise ValueError("n_classes requires norm='group'")
        elif n_cond is not None:
            raise ValueError("n_cond is only used with norm='cin'")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.norm = norm
        self.n_cond = n_cond
        self.n_classes = n_classes
        self.min_size = 2 ** (levels - 1)

        emb_dim = 4 * channels if norm == "group" else None
        self.time_embedding = None
        self.label_embedding = None
        if norm == "group":
            self.time_embedding = TimeEmbedding(
                emb_dim, kind=embedding, feature_dim=channels, time_scale=time_scale
            )
            if n_classes is not None:
                self.label_embedding = _LabelEmbedding(n_classes, emb_dim)
        common = dict(norm=norm, groups=groups, n_cond=n_cond)

        def res(c_in, c_out):
            return _ResBlock(c_in, c_out, emb_dim=emb_dim, dropout=dropout, **common)

        def attention(c):
            return _Attention(c, heads=attn_heads, **common)

        self.conv_in = nn.Conv2d(self.in_channels, channels, 3, padding=1)
        skips = [channels]
        c = channels
        self.down = nn.ModuleList()
        for level, mult in enumerate(mults):
            for _ in range(num_res_blocks):
                stage = _Stage([res(c, channels * mult)])
                c = channels * mult
                if level in attn:
                    stage.append(attention(c))
                self.down.append(stage)
                skips.append(c)
            if level < levels - 1:
                self.down.append(_Downsample(c))
                skips.append(c)
        self.mid = _Stage([res(c, c)] + ([attention(c)] if mid_attn else []) + [res(c, c)])
        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            for _ in range(num_res_blocks + 1):
                stage = _Stage([res(c + skips.pop(), channels * mults[level])])
                c = channels * mults[level]
                if level in attn:
                    stage.append(attention(c))
                self.up.append(stage)
            if level > 0:
                self.up.append(_Upsample(c))
        self.norm_out = _Norm(c, **common)
        self.conv_out = nn.Conv2d(c, self.out_channels, 3, padding=1)

    def _conditioning(self, x: Tensor, t, y) -> Tensor:
        n = x.shape[0]
        if t is None:
            raise TypeError("t is required: UNet(x, t, y=None)")
        t = _batch_vector(t, n, "t", x.device)
        if self.norm == "cin":
            if y is not None:
                raise ValueError("y was given but this UNet has no n_classes")
            return _check_index(t, self.n_cond, "t (noise-level index for norm='cin')")
        if not (t.is_floating_point() or t.dtype in _INTEGER_DTYPES):
            raise TypeError(f"t must be a real number per sample, got dtype {t.dtype}")
        emb = self.time_embedding(t.double() if x.dtype == torch.float64 else t)
        if self.label_embedding is not None:
            emb = emb + self.label_embedding(y, n)
        elif y is not None:
            raise ValueError("y was given but this UNet has no n_classes")
        return F.silu(emb)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        size = tuple(x.shape[-2:])
        if self.image_size is not None and size != (self.image_size, self.image_size):
            raise ValueError(
                f"x must be {self.image_size}x{self.image_size} images for this UNet, got {size}"
            )
        if min(size) < self.min_size:
            raise ValueError(f"x must be at least {self.min_size} pixels high and wide")
        cond = self._conditioning(x, t, y)
        h = self.conv_in(x)
        hs = [h]
        for module in self.down:
            h = module(h) if isinstance(module, _Downsample) else module(h, cond)
            hs.append(h)
        h = self.mid(h, cond)
        for module in self.up:
            if isinstance(module, _Upsample):
                h = module(h, hs[-1].shape[-2:])
            else:
                h = module(torch.cat([h, hs.pop()], dim=1), cond)
        return self.conv_out(F.silu(self.norm_out(h, cond)))


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

UNET_PRESETS: dict[str, dict] = {
    "tiny": dict(channels=8, channel_mults=(1, 2), num_res_blocks=1, mid_attn=False, groups=4),
    "small": dict(channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, groups=8),
    "base": dict(
        channels=96,
        channel_mults=(1, 2, 2),
        num_res_blocks=2,
        attn_levels=(-1,),
        attn_heads=4,
        dropout=0.1,
        groups=32,
    ),
}


def unet(preset: str = "small", in_channels: int = 1, image_size: int = 28, **overrides) -> UNet:
    """A :class:`UNet` of a named size; keyword ``overrides`` replace preset entries.

    ==========  =============================================  ===========  ===========
    preset      architecture                                   params, C=1  params, C=3
    ==========  =============================================  ===========  ===========
    ``tiny``    8 ch x (1, 2), 1 block per level, no attention      40,489       40,779
    ``small``   32 ch x (1, 2, 2), 1 block per level,            1,062,497    1,063,651
                attention in the middle
    ``base``    96 ch x (1, 2, 2), 2 blocks per level,          14,540,161   14,543,619
                4-head attention at the lowest level and in
                the middle, dropout 0.1
    ==========  =============================================  ===========  ===========

    ``tiny`` is for tests and CI, ``small`` for a laptop CPU, ``base`` for a GPU. The
    counts hold for ``norm="group"`` without labels at any image size.
    """
    if preset not in UNET_PRESETS:
        raise ValueError(f"preset must be one of {sorted(UNET_PRESETS)}, got {preset!r}")
    config = {**UNET_PRESETS[preset], **overrides}
    return UNet(in_channels, image_size=image_size, **config)


# --------------------------------------------------------------------------------------
# Energy network for images
# --------------------------------------------------------------------------------------


class EnergyCNN(nn.Module):
    """Scalar energy of images, ``E(x)``: (N, C, H, W) -> (N,) (Du & Mordatch, 2019).

    Four convolutions of stride 2 with a smooth activation (28 -> 16 -> 8 -> 4 -> 2 for
    MNIST), then a read-out that sees the whole 2 x 2 x 4C map: two linear layers on the
    flattened features (other sizes are pooled to 2 x 2 first). The read-out must know *where*
    the features are: with a global average instead, the energy only measures local stroke
    statistics, and Langevin chains on it draw stroke textures rather than digits.
    ``spectral_norm=True`` constrains every layer's spectral norm (Miyato et al., 2018), which
    Du & Mordatch use to keep the energy landscape smooth and training stable.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 32,
        *,
        activation: str = "silu",
        spectral_norm: bool = False,
    ):
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        c = _positive_int(channels, "channels")
        layers = [
            nn.Conv2d(in_channels, c, 5, stride=2, padding=4),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1),
            nn.Conv2d(4 * c, 4 * c, 3, stride=2, padding=1),
            nn.Linear(16 * c, 4 * c),
        ]
        readout = nn.Linear(4 * c, 1)
        if spectral_norm:
            sn = nn.utils.parametrizations.spectral_norm
            layers = [sn(layer) for layer in layers]
            readout = sn(readout)
        body = []
        for layer in layers[:4]:
            body += [layer, _activation(activation)]
        body += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), layers[4], _activation(activation)]
        self.body = nn.Sequential(*body)
        self.readout = readout

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        return self.readout(self.body(x)).squeeze(1)
