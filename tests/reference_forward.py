"""Test oracle for the whole network: docs/algorithm.md sections 1-2 transcribed naively, on a state dict that uses the
reference implementation's parameter names (section 5). Clustering comes from the naive DPC-kNN oracle."""

import torch
import torch.nn.functional as F

from dpc_knn_oracle import dpc_knn_oracle


def reference_state_dict(config, num_labels: int, seed: int = 0) -> dict:
    """Random weights under the reference names and shapes of section 5, scaled so activations stay moderate."""
    generator = torch.Generator().manual_seed(seed)

    def weights(*shape, std=0.02):
        return torch.randn(*shape, generator=generator) * std

    def norm(width, prefix):
        return {f"{prefix}.weight": 1 + weights(width, std=0.1), f"{prefix}.bias": weights(width, std=0.1)}

    def linear(out_features, in_features, prefix, std=0.05):
        return {f"{prefix}.weight": weights(out_features, in_features, std=std),
                f"{prefix}.bias": weights(out_features, std=0.02)}

    state = {}
    in_channels = config.num_channels
    for i, (width, depth) in enumerate(zip(config.hidden_sizes, config.depths), start=1):
        kernel = config.patch_sizes[i - 1]
        state[f"patch_embed{i}.proj.weight"] = weights(width, in_channels, kernel, kernel, std=0.1)
        state[f"patch_embed{i}.proj.bias"] = weights(width, std=0.02)
        state.update(norm(width, f"patch_embed{i}.norm"))
        inner = width * config.mlp_ratios[i - 1]
        for j in range(depth):
            block = f"block{i}.{j}"
            state.update(norm(width, f"{block}.norm1"))
            state.update(linear(width, width, f"{block}.attn.q"))
            if config.cluster_reduction_ratios[i - 1] > 1:
                state.update(linear(1, width, f"{block}.attn.weight_layer"))
                for scale in range(1, len(config.cluster_scales) + 1):
                    state.update(linear(2 * width, width, f"{block}.attn.kv{scale}"))
            else:
                state.update(linear(2 * width, width, f"{block}.attn.kv"))
            state.update(linear(width, width, f"{block}.attn.proj"))
            state.update(norm(width, f"{block}.norm2"))
            state.update(linear(inner, width, f"{block}.mlp.fc1"))
            state[f"{block}.mlp.dwconv.dwconv.weight"] = weights(inner, 1, 3, 3, std=0.1)
            state[f"{block}.mlp.dwconv.dwconv.bias"] = weights(inner, std=0.02)
            state.update(linear(width, inner, f"{block}.mlp.fc2"))
        state.update(norm(width, f"norm{i}"))
        in_channels = width
    state.update(linear(num_labels, config.hidden_sizes[-1], "head"))
    return state


def _attention(state, block, x, heads, ratio, scales, k):
    """Section 2: clustering-guided multi-scale attention (ratio > 1) or plain self-attention (ratio == 1)."""
    batch, num_tokens, width = x.shape
    head_dim = width // heads

    def split_heads(t):
        return t.reshape(batch, -1, heads, head_dim).permute(0, 2, 1, 3)

    q = split_heads(F.linear(x, state[f"{block}.attn.q.weight"], state[f"{block}.attn.q.bias"]))
    if ratio == 1:
        sources = [(x, "kv")]
    else:
        base = num_tokens // ratio**2
        counts = [min(max(scale * base, 1), num_tokens) for scale in scales]
        weight = torch.exp(F.linear(x, state[f"{block}.attn.weight_layer.weight"], state[f"{block}.attn.weight_layer.bias"]))
        assignments = [dpc_knn_oracle(x[b].detach(), counts, k) for b in range(batch)]
        sources = []
        for scale, count in enumerate(counts):
            merged = torch.zeros(batch, count, width)
            for b in range(batch):
                for c in range(count):
                    members = assignments[b][scale] == c
                    merged[b, c] = (weight[b, members] * x[b, members]).sum(0) / (weight[b, members].sum() + 1e-6)
            sources.append((merged, f"kv{scale + 1}"))
    out = 0
    for source, name in sources:
        kv = F.linear(source, state[f"{block}.attn.{name}.weight"], state[f"{block}.attn.{name}.bias"])
        key, value = split_heads(kv[..., :width]), split_heads(kv[..., width:])
        out = out + torch.softmax(q @ key.transpose(-2, -1) * head_dim**-0.5, dim=-1) @ value
    out = out.permute(0, 2, 1, 3).reshape(batch, num_tokens, width)
    return F.linear(out, state[f"{block}.attn.proj.weight"], state[f"{block}.attn.proj.bias"])


def reference_logits(state, config, pixel_values):
    """Logits of the network of section 1 with weights `state` (reference names)."""
    x = pixel_values
    for i, depth in enumerate(config.depths, start=1):
        kernel, stride = config.patch_sizes[i - 1], config.strides[i - 1]
        x = F.conv2d(x, state[f"patch_embed{i}.proj.weight"], state[f"patch_embed{i}.proj.bias"], stride, kernel // 2)
        batch, width, height, grid_width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = F.layer_norm(tokens, (width,), state[f"patch_embed{i}.norm.weight"], state[f"patch_embed{i}.norm.bias"], 1e-5)
        for j in range(depth):
            block = f"block{i}.{j}"
            normed = F.layer_norm(tokens, (width,), state[f"{block}.norm1.weight"], state[f"{block}.norm1.bias"], 1e-6)
            tokens = tokens + _attention(state, block, normed, config.num_attention_heads[i - 1],
                                         config.cluster_reduction_ratios[i - 1], config.cluster_scales,
                                         config.cluster_num_neighbors)
            normed = F.layer_norm(tokens, (width,), state[f"{block}.norm2.weight"], state[f"{block}.norm2.bias"], 1e-6)
            a = F.linear(normed, state[f"{block}.mlp.fc1.weight"], state[f"{block}.mlp.fc1.bias"])
            grid = a.transpose(1, 2).reshape(batch, -1, height, grid_width)
            conv = F.conv2d(grid, state[f"{block}.mlp.dwconv.dwconv.weight"], state[f"{block}.mlp.dwconv.dwconv.bias"],
                            padding=1, groups=grid.shape[1])
            a = F.gelu(a + conv.flatten(2).transpose(1, 2))
            tokens = tokens + F.linear(a, state[f"{block}.mlp.fc2.weight"], state[f"{block}.mlp.fc2.bias"])
        tokens = F.layer_norm(tokens, (width,), state[f"norm{i}.weight"], state[f"norm{i}.bias"], 1e-6)
        x = tokens.transpose(1, 2).reshape(batch, width, height, grid_width)
    return F.linear(tokens.mean(1), state["head.weight"], state["head.bias"])
