"""Brute-force reference implementations of docs/SPEC.md, independent of the library.

Everything here is written from docs/SPEC.md alone with Python dicts, sets and loops
and computes in float64. Inputs in the tests are small (tens to a few hundred
points), so clarity wins over speed. Coordinates are (N, 1 + D) integer arrays
with the batch index in column 0; coordinate rows are handled as tuples of
Python ints, so floor division of negative coordinates is Python's ``//``.

Two families of references are provided:

* the dict oracle (``conv_oracle``, ``pool_oracle``, ...), a literal transcription
  of the formulas of docs/SPEC.md section 3;
* a dense oracle (``conv_dense_oracle``, ``conv_correlate_oracle``) that scatters
  the features into a dense grid and convolves it with shifted sums or
  ``scipy.ndimage.correlate``; it exists to cross-check the dict oracle itself.
"""

import itertools

import numpy as np

# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def as_tuple(value, ndim):
    """An int or a length-``ndim`` sequence as a tuple of ``ndim`` Python ints."""
    if np.ndim(value) == 0:
        return (int(value),) * ndim
    values = tuple(int(v) for v in value)
    if len(values) != ndim:
        raise ValueError(f"expected {ndim} values, got {values}")
    return values


def keys_of(coords):
    """Rows of an integer (N, 1 + D) array as tuples of Python ints."""
    coords = np.asarray(coords)
    return [tuple(int(v) for v in row) for row in coords]


def coords_array(keys, ndim):
    """Tuples back to an int32 (N, 1 + D) array (shape kept for N == 0); int64 when
    a value does not fit int32 (outputs beyond the coordinate range)."""
    rows = np.array(list(keys), dtype=np.int64).reshape(-1, 1 + ndim)
    if rows.size and (rows.min() < -(2**31) or rows.max() >= 2**31):
        return rows
    return rows.astype(np.int32)


def ndim_of(coords):
    return np.asarray(coords).shape[1] - 1


# ---------------------------------------------------------------------------
# docs/SPEC.md section 2: kernel offsets
# ---------------------------------------------------------------------------


def kernel_offsets_oracle(kernel_size, dilation=1, ndim=3):
    """(K, D) int32 box-kernel offsets in docs/SPEC.md order.

    Index grid ``j_d in [0, k_d)`` in C order (first axis slowest); offset
    ``(j_d - c_d) * r_d`` with ``c_d = (k_d - 1) // 2`` for odd ``k_d`` and 0
    for even ``k_d``.
    """
    sizes = as_tuple(kernel_size, ndim)
    dilations = as_tuple(dilation, ndim)
    centres = [(k - 1) // 2 if k % 2 == 1 else 0 for k in sizes]
    rows = []
    for index in itertools.product(*[range(k) for k in sizes]):
        rows.append([(index[d] - centres[d]) * dilations[d] for d in range(ndim)])
    return np.array(rows, dtype=np.int32).reshape(-1, ndim)


# ---------------------------------------------------------------------------
# docs/SPEC.md section 3: output coordinates of every regime
# ---------------------------------------------------------------------------


def _sorted_array(keys, ndim):
    return coords_array(sorted(set(keys)), ndim)


def downsample_coords_oracle(coords, stride):
    """unique floor(v / s) over the rows v, sorted by (batch, x_1..x_D)."""
    ndim = ndim_of(coords)
    s = as_tuple(stride, ndim)
    out = set()
    for key in keys_of(coords):
        out.add((key[0],) + tuple(key[1 + d] // s[d] for d in range(ndim)))
    return _sorted_array(out, ndim)


def expand_coords(coords, offsets, scale=1):
    """{ scale * u + K[k] } over rows u and offsets k (sorted, unique)."""
    ndim = ndim_of(coords)
    s = as_tuple(scale, ndim)
    offsets = [tuple(int(v) for v in off) for off in np.asarray(offsets).reshape(-1, ndim)]
    out = set()
    for key in keys_of(coords):
        for off in offsets:
            out.add((key[0],) + tuple(s[d] * key[1 + d] + off[d] for d in range(ndim)))
    return _sorted_array(out, ndim)


def generative_coords_oracle(coords, offsets, stride=1):
    """Generative regime (docs/SPEC.md section 3, as changed on 2026-11-28).

    Every coordinate some input reaches: the outputs w for which the forward
    formula ``y_w = sum_k x_{w + K[k]}`` has at least one term, i.e.
    ``{ u - K[k] }`` over the rows u. For stride s > 1 the rows are first
    downsampled (``unique floor(v / s)``) and then expanded the same way.
    """
    ndim = ndim_of(coords)
    s = as_tuple(stride, ndim)
    base = coords if all(v == 1 for v in s) else downsample_coords_oracle(coords, s)
    offsets = [tuple(int(v) for v in off) for off in np.asarray(offsets).reshape(-1, ndim)]
    reached = set()
    for u in keys_of(base):
        for off in offsets:
            # w + K[k] == u: the output w reads the input u through offset k
            reached.add((u[0],) + tuple(u[1 + d] - off[d] for d in range(ndim)))
    return _sorted_array(reached, ndim)


def transposed_generative_coords_oracle(coords, offsets, stride):
    """Transposed + generative regime: { s * u + K[k] }."""
    return expand_coords(coords, offsets, stride)


# ---------------------------------------------------------------------------
# weights of the three variants
# ---------------------------------------------------------------------------


def weight_channels(weight, groups=1):
    """(C_in, C_out) of a standard (K, C_in, C_out), group (K, G, C_in/G,
    C_out/G) or depthwise (K, C) weight."""
    weight = np.asarray(weight)
    if weight.ndim == 3:
        assert groups == 1
        return weight.shape[1], weight.shape[2]
    if weight.ndim == 2:
        return weight.shape[1], weight.shape[1]
    if weight.ndim == 4:
        assert weight.shape[1] == groups
        return groups * weight.shape[2], groups * weight.shape[3]
    raise ValueError(f"bad weight shape {weight.shape}")


def apply_weight(x_row, weight, k, groups=1):
    """``x_row`` (C_in,) times the weight of offset ``k``: the (C_out,) row.

    Group g of the output sees only group g of the input; depthwise multiplies
    channel by channel.
    """
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim == 3:
        return x_row @ weight[k]
    if weight.ndim == 2:
        return x_row * weight[k]
    n_groups, cin_g = weight.shape[1], weight.shape[2]
    parts = [x_row[g * cin_g:(g + 1) * cin_g] @ weight[k, g] for g in range(n_groups)]
    return np.concatenate(parts)


def apply_weight_transpose(g_row, weight, k, groups=1):
    """``g_row`` (C_out,) times the transposed weight of offset ``k``."""
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim == 3:
        return weight[k] @ g_row
    if weight.ndim == 2:
        return g_row * weight[k]
    n_groups, cout_g = weight.shape[1], weight.shape[3]
    parts = [weight[k, g] @ g_row[g * cout_g:(g + 1) * cout_g] for g in range(n_groups)]
    return np.concatenate(parts)


def full_weight(weight, groups=1):
    """Any weight variant as the equivalent standard (K, C_in, C_out) weight
    (block diagonal for groups, diagonal for depthwise)."""
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim == 3:
        return weight.copy()
    n_k = weight.shape[0]
    c_in, c_out = weight_channels(weight, groups)
    full = np.zeros((n_k, c_in, c_out))
    if weight.ndim == 2:
        for k in range(n_k):
            full[k] = np.diag(weight[k])
        return full
    n_groups, cin_g, cout_g = weight.shape[1:]
    for k in range(n_k):
        for g in range(n_groups):
            full[k, g * cin_g:(g + 1) * cin_g, g * cout_g:(g + 1) * cout_g] = weight[k, g]
    return full


# ---------------------------------------------------------------------------
# docs/SPEC.md section 3: the convolution
# ---------------------------------------------------------------------------


def conv_oracle(in_coords, feats, weight, offsets, stride, out_coords,
                transposed=False, groups=1, bias=None):
    """Sparse convolution, a literal transcription of docs/SPEC.md section 3 (float64).

    Forward:     y_u = sum_{k : s*u + K[k] in C_in} x_{s*u+K[k]} @ W[k]
    Transposed:  y_w = sum_{(u, k) : s*u + K[k] == w} x_u @ W[k]
    Batch indices must match. Returns (n_out, C_out) float64.
    """
    ndim = ndim_of(in_coords)
    s = as_tuple(stride, ndim)
    feats = np.asarray(feats, dtype=np.float64)
    offsets = [tuple(int(v) for v in off) for off in np.asarray(offsets).reshape(-1, ndim)]
    in_keys = keys_of(in_coords)
    out_keys = keys_of(out_coords)
    _, c_out = weight_channels(weight, groups)
    y = np.zeros((len(out_keys), c_out))
    if not transposed:
        in_index = {key: i for i, key in enumerate(in_keys)}
        for o, u in enumerate(out_keys):
            for k, off in enumerate(offsets):
                v = (u[0],) + tuple(s[d] * u[1 + d] + off[d] for d in range(ndim))
                i = in_index.get(v)
                if i is not None:
                    y[o] += apply_weight(feats[i], weight, k, groups)
    else:
        out_index = {key: o for o, key in enumerate(out_keys)}
        for i, u in enumerate(in_keys):
            for k, off in enumerate(offsets):
                w = (u[0],) + tuple(s[d] * u[1 + d] + off[d] for d in range(ndim))
                o = out_index.get(w)
                if o is not None:
                    y[o] += apply_weight(feats[i], weight, k, groups)
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)
    return y


def kernel_map_oracle(in_coords, out_coords, offsets, stride=1, transposed=False):
    """For each offset k, the set of (input row, output row) pairs it connects.

    Forward: in_coords[i] == s * out_coords[o] + K[k];
    transposed: out_coords[o] == s * in_coords[i] + K[k]; batch must match.
    """
    ndim = ndim_of(in_coords)
    s = as_tuple(stride, ndim)
    offsets = [tuple(int(v) for v in off) for off in np.asarray(offsets).reshape(-1, ndim)]
    in_keys = keys_of(in_coords)
    out_keys = keys_of(out_coords)
    pairs = [set() for _ in offsets]
    if not transposed:
        in_index = {key: i for i, key in enumerate(in_keys)}
        for o, u in enumerate(out_keys):
            for k, off in enumerate(offsets):
                v = (u[0],) + tuple(s[d] * u[1 + d] + off[d] for d in range(ndim))
                if v in in_index:
                    pairs[k].add((in_index[v], o))
    else:
        out_index = {key: o for o, key in enumerate(out_keys)}
        for i, u in enumerate(in_keys):
            for k, off in enumerate(offsets):
                w = (u[0],) + tuple(s[d] * u[1 + d] + off[d] for d in range(ndim))
                if w in out_index:
                    pairs[k].add((i, out_index[w]))
    return pairs


def conv_from_pairs_oracle(feats, weight, pairs, n_out, groups=1, bias=None):
    """Y[out] += A[in] @ W[k] over the pairs of every offset (docs/SPEC.md section 5)."""
    feats = np.asarray(feats, dtype=np.float64)
    _, c_out = weight_channels(weight, groups)
    y = np.zeros((n_out, c_out))
    for k, pair_set in enumerate(pairs):
        for i, o in sorted(pair_set):
            y[o] += apply_weight(feats[i], weight, k, groups)
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)
    return y


def conv_input_grad_oracle(grad_out, weight, pairs, n_in, groups=1):
    """dX[in] += dY[out] @ W[k]^T over the pairs of every offset."""
    grad_out = np.asarray(grad_out, dtype=np.float64)
    c_in, _ = weight_channels(weight, groups)
    dx = np.zeros((n_in, c_in))
    for k, pair_set in enumerate(pairs):
        for i, o in sorted(pair_set):
            dx[i] += apply_weight_transpose(grad_out[o], weight, k, groups)
    return dx


def conv_weight_grad_oracle(feats, grad_out, pairs, weight_shape, groups=1):
    """dW[k] = A[in]^T @ dY[out], restricted to the entries the variant has."""
    feats = np.asarray(feats, dtype=np.float64)
    grad_out = np.asarray(grad_out, dtype=np.float64)
    dw = np.zeros(weight_shape)
    for k, pair_set in enumerate(pairs):
        for i, o in sorted(pair_set):
            if len(weight_shape) == 3:
                dw[k] += np.outer(feats[i], grad_out[o])
            elif len(weight_shape) == 2:
                dw[k] += feats[i] * grad_out[o]
            else:
                n_groups, cin_g, cout_g = weight_shape[1:]
                for g in range(n_groups):
                    dw[k, g] += np.outer(feats[i, g * cin_g:(g + 1) * cin_g],
                                         grad_out[o, g * cout_g:(g + 1) * cout_g])
    return dw


# ---------------------------------------------------------------------------
# dense references (to cross-check the dict oracle), stride 1 only
# ---------------------------------------------------------------------------


def conv_dense_oracle(in_coords, feats, weight, offsets, out_coords, groups=1):
    """Stride-1 forward convolution through a dense grid per batch item.

    Scatter the features into a zero-padded dense array covering both
    coordinate sets, form ``Y = sum_k shift(X, K[k]) @ W[k]`` with array
    slicing, and read ``Y`` back at the output sites.
    """
    in_coords = np.asarray(in_coords, dtype=np.int64)
    out_coords = np.asarray(out_coords, dtype=np.int64)
    ndim = in_coords.shape[1] - 1
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, ndim)
    feats = np.asarray(feats, dtype=np.float64)
    w_full = full_weight(weight, groups)
    c_out = w_full.shape[2]
    y = np.zeros((len(out_coords), c_out))
    if len(out_coords) == 0 or len(in_coords) == 0:
        return y
    pad = int(np.abs(offsets).max()) if offsets.size else 0
    both = np.concatenate([in_coords, out_coords])
    low = both[:, 1:].min(axis=0) - pad
    high = both[:, 1:].max(axis=0) + pad + 1
    shape = tuple(int(v) for v in high - low)
    for b in np.unique(both[:, 0]):
        grid = np.zeros(shape + (feats.shape[1],))
        sel = in_coords[:, 0] == b
        grid[tuple((in_coords[sel, 1:] - low).T)] = feats[sel]
        out_grid = np.zeros(tuple(n - 2 * pad for n in shape) + (c_out,))
        for k, off in enumerate(offsets):
            shifted = tuple(slice(pad + int(o), n - pad + int(o)) for o, n in zip(off, shape))
            out_grid += grid[shifted] @ w_full[k]
        sel_out = out_coords[:, 0] == b
        y[sel_out] = out_grid[tuple((out_coords[sel_out, 1:] - low - pad).T)]
    return y


def conv_correlate_oracle(coords, feats, weight, kernel_size, groups=1):
    """Stride-1 submanifold convolution with an odd box kernel (dilation 1)
    through ``scipy.ndimage.correlate`` on a dense grid per batch item."""
    from scipy import ndimage

    coords = np.asarray(coords, dtype=np.int64)
    ndim = coords.shape[1] - 1
    sizes = as_tuple(kernel_size, ndim)
    assert all(k % 2 == 1 for k in sizes), "scipy centres odd kernels only like docs/SPEC.md"
    feats = np.asarray(feats, dtype=np.float64)
    w_full = full_weight(weight, groups)
    c_in, c_out = w_full.shape[1:]
    w_box = w_full.reshape(sizes + (c_in, c_out))
    y = np.zeros((len(coords), c_out))
    if len(coords) == 0:
        return y
    pad = max(sizes) // 2
    low = coords[:, 1:].min(axis=0) - pad
    shape = tuple(int(v) for v in coords[:, 1:].max(axis=0) - low + pad + 1)
    for b in np.unique(coords[:, 0]):
        sel = coords[:, 0] == b
        where = tuple((coords[sel, 1:] - low).T)
        for ci in range(c_in):
            grid = np.zeros(shape)
            grid[where] = feats[sel, ci]
            for co in range(c_out):
                if not np.any(w_box[..., ci, co]):
                    continue
                out = ndimage.correlate(grid, w_box[..., ci, co], mode="constant", cval=0.0)
                y[sel, co] += out[where]
    return y


# ---------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------


def _active_inputs(in_index, u, offsets, s):
    """Input rows of the active offsets of output u, in kernel order."""
    ndim = len(s)
    rows = []
    for off in offsets:
        v = (u[0],) + tuple(s[d] * u[1 + d] + off[d] for d in range(ndim))
        if v in in_index:
            rows.append(in_index[v])
    return rows


def pool_oracle(in_coords, feats, offsets, stride, out_coords, mode):
    """max / avg / sum over the active offsets of each output (float64).

    avg divides by the number of active offsets; an output with no active
    offset gets 0 (tests avoid that case).
    """
    ndim = ndim_of(in_coords)
    s = as_tuple(stride, ndim)
    feats = np.asarray(feats, dtype=np.float64)
    offsets = [tuple(int(v) for v in off) for off in np.asarray(offsets).reshape(-1, ndim)]
    in_index = {key: i for i, key in enumerate(keys_of(in_coords))}
    out_keys = keys_of(out_coords)
    y = np.zeros((len(out_keys), feats.shape[1]))
    for o, u in enumerate(out_keys):
        rows = _active_inputs(in_index, u, offsets, s)
        if not rows:
            continue
        vals = feats[rows]
        if mode == "max":
            y[o] = vals.max(axis=0)
        elif mode == "avg":
            y[o] = vals.sum(axis=0) / len(rows)
        elif mode == "sum":
            y[o] = vals.sum(axis=0)
        else:
            raise ValueError(mode)
    return y


def pool_backward_oracle(grad_out, in_coords, feats, offsets, stride, out_coords, mode):
    """Gradient of ``pool_oracle`` w.r.t. the features. max: to the argmax
    input per channel, ties to the first active offset in kernel order."""
    ndim = ndim_of(in_coords)
    s = as_tuple(stride, ndim)
    feats = np.asarray(feats, dtype=np.float64)
    grad_out = np.asarray(grad_out, dtype=np.float64)
    offsets = [tuple(int(v) for v in off) for off in np.asarray(offsets).reshape(-1, ndim)]
    in_index = {key: i for i, key in enumerate(keys_of(in_coords))}
    dx = np.zeros_like(feats)
    for o, u in enumerate(keys_of(out_coords)):
        rows = _active_inputs(in_index, u, offsets, s)
        if not rows:
            continue
        if mode == "max":
            winner = np.argmax(feats[rows], axis=0)  # first maximum = first offset
            for c in range(feats.shape[1]):
                dx[rows[winner[c]], c] += grad_out[o, c]
        elif mode == "avg":
            for i in rows:
                dx[i] += grad_out[o] / len(rows)
        elif mode == "sum":
            for i in rows:
                dx[i] += grad_out[o]
        else:
            raise ValueError(mode)
    return dx


def global_pool_oracle(coords, feats, mode):
    """One row per batch item present, coords [b, 0, ..., 0] sorted by b."""
    ndim = ndim_of(coords)
    feats = np.asarray(feats, dtype=np.float64)
    by_batch = {}
    for i, key in enumerate(keys_of(coords)):
        by_batch.setdefault(key[0], []).append(i)
    batches = sorted(by_batch)
    out = np.zeros((len(batches), feats.shape[1]))
    for j, b in enumerate(batches):
        vals = feats[by_batch[b]]
        if mode == "mean":
            out[j] = vals.sum(axis=0) / len(vals)
        elif mode == "max":
            out[j] = vals.max(axis=0)
        elif mode == "sum":
            out[j] = vals.sum(axis=0)
        else:
            raise ValueError(mode)
    out_coords = coords_array([(b,) + (0,) * ndim for b in batches], ndim)
    return out_coords, out


def upsample_nearest_oracle(fine_coords, coarse_coords, coarse_feats, stride):
    """Each fine row v gets the feature of its coarse parent floor(v / s)."""
    ndim = ndim_of(fine_coords)
    s = as_tuple(stride, ndim)
    coarse_feats = np.asarray(coarse_feats, dtype=np.float64)
    index = {key: i for i, key in enumerate(keys_of(coarse_coords))}
    out = np.zeros((len(fine_coords), coarse_feats.shape[1]))
    for j, v in enumerate(keys_of(fine_coords)):
        parent = (v[0],) + tuple(v[1 + d] // s[d] for d in range(ndim))
        out[j] = coarse_feats[index[parent]]
    return out
