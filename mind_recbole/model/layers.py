"""Building blocks shared by MIND and YouTubeDNN: feature embeddings, routing, attention, scoring."""

import math
from collections import namedtuple

import torch
from torch import nn

BestInterest = namedtuple("BestInterest", "values indices")  # what best_interest returns, as torch.max does


class FeatureEmbedding(nn.Module):
    """Embeds the token / token_seq features of an id (item or user) from a fixed feature table.

    A token feature is one lookup; a token_seq feature is the mean of its tokens. Padding (token 0)
    is masked, so an id whose feature is missing gets no vector for it (``present`` is False).

    Args:
        tables (dict): field -> LongTensor ``[n_ids]`` (token) or ``[n_ids, max_len]`` (token_seq).
        vocab_sizes (dict): field -> number of tokens, padding included.
        embedding_size (int): output size D of each field's embedding.

    Shape:
        - Input: ids ``[*]``.
        - Output: per field, a tuple (vectors ``[*, D]``, present ``[*]`` bool).
    """

    def __init__(self, tables, vocab_sizes, embedding_size):
        super().__init__()
        self.fields = list(tables)
        self.embeddings = nn.ModuleDict(
            {field: nn.Embedding(vocab_sizes[field], embedding_size, padding_idx=0) for field in self.fields}
        )
        for field, table in tables.items():
            self.register_buffer(f"table_{field}", table, persistent=False)

    def forward(self, ids):
        outputs = {}
        for field in self.fields:
            values = getattr(self, f"table_{field}")[ids]  # [*] or [*, T]
            vectors = self.embeddings[field](values)  # [*, D] or [*, T, D]
            if values.dim() > ids.dim():  # token_seq: masked mean over tokens
                counts = (values > 0).sum(-1, keepdim=True)  # [*, 1]
                vectors = vectors.sum(-2) / counts.clamp(min=1)
                present = counts.squeeze(-1) > 0
            else:
                present = values > 0
            outputs[field] = (vectors, present)
        return outputs


class ItemTower(nn.Module):
    """Item vector: average pooling of the item id embedding and its side-feature embeddings.

    Missing side features (padding) are left out of the average, as MIND's paper pools the
    features an item has.

    With side features, each distinct id of the input is pooled once and the result gathered to
    every position: a batch of histories (``[1024, 50]``) holds a few thousand distinct items, and
    pooling a token_seq feature per position (``[1024, 50, 5, D]`` for Amazon's categories) was
    most of a training step. Each item's vector is the same either way.

    Shape:
        - Input: item ids ``[*]`` (0 is padding and maps to the zero vector).
        - Output: ``[*, D]``.
    """

    def __init__(self, n_items, embedding_size, side_tables, side_vocab_sizes):
        super().__init__()
        self.id_embedding = nn.Embedding(n_items, embedding_size, padding_idx=0)
        self.side_features = FeatureEmbedding(side_tables, side_vocab_sizes, embedding_size)

    def forward(self, item_ids):
        if not self.side_features.fields:
            return self.id_embedding(item_ids)  # [*, D]
        distinct, positions = torch.unique(item_ids, return_inverse=True)  # [U], [*]
        return self.pooled(distinct)[positions]

    def pooled(self, item_ids):
        """The id embedding and side-feature embeddings of ``item_ids`` ``[*]`` averaged: ``[*, D]``."""
        total = self.id_embedding(item_ids)  # [*, D]
        count = torch.ones_like(item_ids, dtype=total.dtype)  # [*]
        for vectors, present in self.side_features(item_ids).values():
            total = total + vectors
            count = count + present.to(total.dtype)
        return total / count.unsqueeze(-1)


class UserProfileEmbedding(nn.Module):
    """Concatenated embeddings of a user's profile fields (age, gender, ...); zeros where missing.

    Shape:
        - Input: user ids ``[B]``.
        - Output: ``[B, n_fields * D]`` (``[B, 0]`` when no field is configured).
    """

    def __init__(self, profile_tables, profile_vocab_sizes, embedding_size):
        super().__init__()
        self.features = FeatureEmbedding(profile_tables, profile_vocab_sizes, embedding_size)
        self.output_size = len(profile_tables) * embedding_size
        self.user_count = next((len(table) for table in profile_tables.values()), 0)  # user ids it knows

    def forward(self, user_ids):
        vectors = [vectors for vectors, _ in self.features(user_ids).values()]
        if not vectors:
            return user_ids.new_zeros((user_ids.shape[0], 0), dtype=torch.float)
        return torch.cat(vectors, dim=-1)


def squash(vectors, dim=-1, eps=1e-9):
    """Capsule squash: ``|z|^2 / (1 + |z|^2) * z / |z|``; maps the zero vector to zero."""
    squared_norm = (vectors * vectors).sum(dim, keepdim=True)
    return squared_norm / (1.0 + squared_norm) * vectors / torch.sqrt(squared_norm + eps)


def interest_count_mask(seq_len, interest_num):
    """Mask of each user's active interests, ``K'_u = max(1, min(K, floor(log2 |I_u|)))``.

    Computed with integer comparisons (``|I_u| >= 2^k``), exact for every length and free of
    floating-point ``log2`` rounding, also after ONNX export.

    Shape:
        - Input: seq_len ``[B]`` (int), interest_num K.
        - Output: ``[B, K]`` bool, True for the first ``K'_u`` interests.
    """
    powers = 2 ** torch.arange(1, interest_num + 1, device=seq_len.device)  # [K]: 2, 4, ..., 2^K
    count = (seq_len.unsqueeze(-1) >= powers).sum(-1).clamp(min=1, max=interest_num)  # [B]
    positions = torch.arange(interest_num, device=seq_len.device)  # [K]
    return positions.unsqueeze(0) < count.unsqueeze(-1)


class B2IDynamicRouting(nn.Module):
    """Behaviour-to-interest (B2I) dynamic routing of MIND (Li et al., 2019, Algorithm 1).

    Every behaviour embedding ``e_j`` is mapped by one shared bilinear matrix ``S`` and routed to
    the interest capsules: routing logits ``b_kj`` start from ``N(0, sigma^2)``, the weights are a
    softmax over the *interests* ``k`` (inactive interests excluded), padded behaviours get weight
    0, ``u_k = squash(sum_j w_kj S e_j)`` and ``b_kj += u_k . S e_j`` between iterations.

    Training draws fresh logits for every sequence, as the paper does. In eval mode the logits come
    from a buffer drawn once from the same distribution (saved with the model), so inference is
    deterministic and exportable; ``fixed_init=True`` uses that buffer in training too. With
    ``detach_logits=True`` (as in ComiRec's implementation) the logit updates do not
    back-propagate (``S e_j`` is detached there) and only the last iteration's capsules carry
    gradients to ``S`` and the embeddings; ``False`` back-propagates through every iteration.

    Args:
        embedding_size (int): D, size of behaviour embeddings and capsules.
        interest_num (int): K, the maximum number of interests.
        max_seq_length (int): longest history, the size of the eval logits buffer.
        iterations (int): routing iterations r (3 in the paper).
        init_std (float): sigma of the routing logits' normal initialisation.
        fixed_init (bool): train with the fixed eval draw instead of fresh logits per sequence.
        detach_logits (bool): no gradient through the routing-logit updates.

    Shape:
        - behaviours: ``[B, L, D]``; seq_mask: ``[B, L]`` bool; interest_mask: ``[B, K]`` bool.
        - Output: capsules ``[B, K, D]`` (zero for inactive interests); :meth:`route` also returns
          the last iteration's routing weights ``[B, K, L]`` (0 at padding and inactive interests).
    """

    def __init__(
        self, embedding_size, interest_num, max_seq_length, iterations=3, init_std=1.0, fixed_init=False, detach_logits=True
    ):
        super().__init__()
        self.interest_num = interest_num
        self.iterations = iterations
        self.init_std = init_std
        self.fixed_init = fixed_init
        self.detach_logits = detach_logits
        self.bilinear = nn.Parameter(torch.empty(embedding_size, embedding_size))  # S
        nn.init.xavier_normal_(self.bilinear)
        self.register_buffer("eval_routing_logits", torch.randn(interest_num, max_seq_length) * init_std)

    def initial_logits(self, batch_size, seq_len, like):
        if self.training and not self.fixed_init:
            return torch.randn(batch_size, self.interest_num, seq_len, device=like.device) * self.init_std
        return self.eval_routing_logits[:, :seq_len].unsqueeze(0).expand(batch_size, -1, -1)

    def forward(self, behaviours, seq_mask, interest_mask):
        return self.route(behaviours, seq_mask, interest_mask)[0]

    def map_behaviours(self, behaviours):
        """``S e_j`` for behaviours ``[*, D]``: the only place a behaviour enters routing."""
        return behaviours @ self.bilinear.transpose(0, 1)

    def route_mapped_eval(self, mapped, interest_mask):
        """Eval-mode capsules ``[B, K, D]`` from behaviours already mapped by ``S`` (``[B, L, D]``,
        padded positions exactly 0): :meth:`forward` in eval mode, in a form that exports to a
        smaller, faster graph (the serving tower of ``mind-recbole export``).

        The same computation, arranged differently: the inactive interests are set to ``-inf`` once
        in the initial logits (their capsules are zero, so updates leave them at ``-inf``), the
        softmax over interests is written out (max, exp, sum), and padded positions need no weight
        mask because their mapped vectors are zero. Needs one active interest per row.
        """
        seq_len = mapped.shape[1]
        inactive = torch.zeros_like(interest_mask, dtype=mapped.dtype).masked_fill(~interest_mask, float("-inf"))  # [B K]
        logits = self.eval_routing_logits[:, :seq_len].unsqueeze(0) + inactive.unsqueeze(-1)  # [B K L]
        mapped_t = mapped.transpose(1, 2)  # [B D L]
        for iteration in range(self.iterations):
            exp = torch.exp(logits - logits.amax(dim=1, keepdim=True))  # [B K L]
            capsules = squash((exp / exp.sum(dim=1, keepdim=True)) @ mapped)  # [B K D]
            if iteration < self.iterations - 1:
                logits = logits + capsules @ mapped_t  # [B K L]
        return capsules

    def route(self, behaviours, seq_mask, interest_mask):
        """Capsules ``[B, K, D]`` and the weights ``w_kj`` ``[B, K, L]`` that built them (see the class)."""
        batch_size, seq_len, _ = behaviours.shape
        # S e_j at the real positions only (most of a training batch's [B, L] is padding, whose e_j is 0)
        mapped = torch.zeros_like(behaviours).index_put_((seq_mask,), self.map_behaviours(behaviours[seq_mask]))  # [B L D]
        mapped_for_logits = mapped.detach() if self.detach_logits else mapped
        logits = self.initial_logits(batch_size, seq_len, behaviours)  # [B K L]
        inactive = ~interest_mask.unsqueeze(-1)  # [B K 1]
        behaviour_weight = seq_mask.unsqueeze(1).to(behaviours.dtype)  # [B 1 L]
        for iteration in range(self.iterations):
            last = iteration == self.iterations - 1
            weights = torch.softmax(logits.masked_fill(inactive, float("-inf")), dim=1)  # [B K L]
            weights = weights * behaviour_weight
            source = mapped if last else mapped_for_logits
            capsules = squash(weights @ source)  # [B K D]
            if not last:
                logits = logits + capsules @ source.transpose(1, 2)  # [B K L]
        return capsules, weights


def attention_weights(scores, interest_mask, power):
    """Label-aware attention weights ``softmax_k(pow(s_k, p))`` over the active interests (dim 1).

    ``pow`` keeps the sign (``sign(x) |x|^p``) so that the ordering of the scores is kept for any
    real ``p > 0``; ``p = inf`` selects the best-matching interest (hard attention), the limit of
    large ``p``. Powered scores are clipped to +-1e30 so that large finite ``p`` never overflows.
    Gradients stay finite for any ``p > 0``, below 1 too, also where a score is exactly 0.

    Shape:
        - scores ``[B, K, *]``, interest_mask ``[B, K]`` bool. Output: ``[B, K, *]``.
    """
    inactive = ~interest_mask.reshape(*interest_mask.shape, *([1] * (scores.dim() - 2)))
    if math.isinf(power):
        best = best_interest(scores, interest_mask).indices.unsqueeze(1)  # [B 1 *]
        return torch.zeros_like(scores).scatter_(1, best, 1.0)
    # |x| is kept away from 0 (and is 1 at inactive interests): for p < 1 the gradient of |x|^p
    # at 0 is infinite, and 0 * inf would turn the whole batch's gradient into NaN.
    magnitude = scores.abs().masked_fill(inactive, 1.0).clamp(min=1e-6)
    powered = torch.sign(scores) * magnitude.pow(power)
    powered = powered.clamp(-1e30, 1e30).masked_fill(inactive, float("-inf"))
    return torch.softmax(powered, dim=1)


def label_aware_attention(interests, interest_mask, target, power):
    """MIND's label-aware attention: ``v_u = V softmax(pow(V^T e_i, p))`` over active interests.

    See :func:`attention_weights` for ``p``.

    Shape:
        - interests ``[B, K, D]``, interest_mask ``[B, K]`` bool, target ``[B, D]``.
        - Output: ``[B, D]``.
    """
    scores = torch.einsum("bkd,bd->bk", interests, target)  # [B K]
    weights = attention_weights(scores, interest_mask, power)  # [B K]
    return torch.einsum("bk,bkd->bd", weights, interests)


def label_aware_scores(interests, interest_mask, item_vectors, power):
    """Every item scored under label-aware attention with *itself* as the label.

    ``score(i) = e_i . V softmax(pow(V^T e_i, p))``; ``p = inf`` gives the serving score
    ``max_k e_i . v_u^k``. For the label item this equals ``e_i . label_aware_attention(...)``.

    Shape:
        - interests ``[B, K, D]``, interest_mask ``[B, K]`` bool, item_vectors ``[N, D]``.
        - Output: ``[B, N]``.
    """
    if math.isinf(power):
        return HardLabelScores.apply(interests, item_vectors, interest_mask)
    scores = torch.einsum("bkd,nd->bkn", interests, item_vectors)  # [B K N]
    weights = attention_weights(scores, interest_mask, power)  # [B K N]
    return (weights * scores.masked_fill(~interest_mask.unsqueeze(-1), 0.0)).sum(1)


HARD_SCORE_BLOCK_FLOATS = 1 << 21  # 8 MB: HardLabelScores' [rows, k, N] blocks stay below glibc's mmap threshold


class HardLabelScores(torch.autograd.Function):
    """``max_k e_i . v_u^k`` over active interests, with gradients, for training over many items.

    Autograd's ``amax`` over a ``[B, K, N]`` tensor spends most of a step in its backward; this
    keeps the indicator of the winning interests (:func:`interest_winners`, written over the
    scores' own memory) and back-propagates by two matmuls. Same values and gradients as ``amax``
    over the active interests, ties included (a tie shares the gradient evenly).

    Only active interests are scored: users are grouped by their number of active interests
    ``k`` and each group's ``[b, k, N]`` block is dense (a training batch of amazon-beauty averages
    2.0 active interests of 4, so this halves the scoring; a user with one interest needs no
    indicator at all). The blocks hold at most ``block_floats`` scores: a block above glibc's
    mmap threshold (32 MB; ``[1024, 4, 2024]`` is 33 MB) is a fresh mapping on every step, and
    the page faults of writing it cost more than the matmul that fills it, while smaller blocks
    are reused from the heap (``malloc_tuning``). Neither changes the values.

    Shape:
        - interests ``[B, K, D]``, item_vectors ``[N, D]``, interest_mask ``[B, K]`` bool
          (at least one interest active in every row). Output: ``[B, N]``.
    """

    @staticmethod
    def forward(ctx, interests, item_vectors, interest_mask, block_floats=HARD_SCORE_BLOCK_FLOATS):
        batch_size, interest_num, size = interests.shape
        n_items = item_vectors.shape[0]
        items_t = item_vectors.transpose(0, 1)  # [D N]
        active_first = torch.argsort((~interest_mask).to(torch.int8), dim=1, stable=True)  # [B K]
        counts = interest_mask.sum(1)  # [B]
        best_scores = interests.new_full((batch_size, n_items), float("-inf"))  # [B N]
        ctx.blocks, shares = [], []  # per block: its rows [b], their active interests [b k], index into shares
        for active in range(1, interest_num + 1):
            users = torch.nonzero(counts == active).squeeze(1)  # [U_k]
            block_rows = max(1, block_floats // (active * n_items))
            for start in range(0, users.shape[0], block_rows):
                rows = users[start : start + block_rows]  # [b]
                chosen = active_first[rows, :active]  # [b k]
                vectors = interests[rows.unsqueeze(1), chosen].reshape(-1, size)  # [bk D]
                scores = (vectors @ items_t).view(rows.shape[0], active, n_items)  # [b k N]
                if active == 1:  # the only interest wins every item
                    best_scores[rows] = scores[:, 0]
                    ctx.blocks.append((rows, chosen, None))
                    continue
                best, winners = interest_winners(scores, None, in_place=True)  # [b N], [b k N]: all k active
                best_scores[rows] = best
                shares.append(winners.div_(winners.sum(1, keepdim=True)))  # ties share
                ctx.blocks.append((rows, chosen, len(shares) - 1))
        ctx.save_for_backward(interests, item_vectors, *shares)
        return best_scores

    @staticmethod
    def backward(ctx, grad):
        interests, item_vectors, *shares = ctx.saved_tensors
        size = interests.shape[-1]
        grad_interests = torch.zeros_like(interests)  # [B K D]: inactive interests get nothing
        grad_items = torch.zeros_like(item_vectors)  # [N D]
        for rows, chosen, share in ctx.blocks:
            routed = grad[rows]  # [b N]
            if share is not None:  # to the winning interest
                routed = (shares[share] * routed.unsqueeze(1)).view(-1, routed.shape[-1])  # [bk N]
            index = (rows.unsqueeze(1), chosen)
            grad_interests[index] = (routed @ item_vectors).view(*chosen.shape, size)
            grad_items.addmm_(routed.transpose(0, 1), interests[index].reshape(-1, size))
        return grad_interests, grad_items, None, None


def _without_inactive(scores, interest_mask, in_place):
    """``scores`` ``[B, K, *]`` with ``-inf`` at the inactive interests (over ``scores`` when ``in_place``);
    ``interest_mask`` None: every interest is active, ``scores`` as they are."""
    if interest_mask is None:
        return scores
    blocked = torch.zeros(interest_mask.shape, dtype=scores.dtype, device=scores.device)
    blocked = blocked.masked_fill_(~interest_mask, float("-inf")).view(*interest_mask.shape, *([1] * (scores.dim() - 2)))
    return scores.add_(blocked) if in_place else scores + blocked


def interest_max(scores, interest_mask, in_place=False):
    """The max over the interest axis of ``scores``, inactive interests left out: the served score
    ``max_k`` in torch (the serving side's numpy twin is :func:`export.retrieval.max_over_interests_topk`),
    values only; :func:`interest_winners` also says which interests reach it.

    ``amax`` only (``max`` with indices reduces over the strided interest axis about ten times
    slower). ``in_place=True`` overwrites ``scores``.

    Shape:
        - scores ``[B, K, *]``, interest_mask ``[B, K]`` bool (at least one active per row).
        - Output: ``[B, *]``.
    """
    return _without_inactive(scores, interest_mask, in_place).amax(dim=1)


@torch.no_grad()
def interest_winners(scores, interest_mask, in_place=False):
    """:func:`interest_max` and which interests reach it (:func:`best_interest` names the first).

    Elementwise float operations only. ``in_place=True`` writes the indicator over ``scores``.
    No gradient: the indicator is a choice, not a function to differentiate (:class:`HardLabelScores`
    routes the gradient itself, :func:`interest_max` gives the differentiable max). Under autograd
    the in-place steps would also rewrite the tensor ``amax`` saved for its backward, and autograd's
    graph would then hold itself in a cycle that is never freed: a whole training step's
    activations leaked per step.

    Shape:
        - scores ``[B, K, *]``, interest_mask ``[B, K]`` bool (at least one active per row) or None (all active).
        - Output: ``(values [B, *], winners [B, K, *])``, winners 1.0 where interest k reaches the
          max and 0.0 elsewhere (inactive interests never).
    """
    masked = _without_inactive(scores, interest_mask, in_place)  # [B K *]: -inf at inactive interests
    values = masked.amax(dim=1)  # [B *]
    return values, masked.sub_(values.unsqueeze(1)).sign_().add_(1)  # score - max is 0 at the max, < 0 elsewhere


def best_interest(scores, interest_mask):
    """The max over the interest axis of ``scores``, inactive interests left out, and the first
    interest that reaches it (:func:`interest_winners`; no gradient).

    Shape:
        - scores ``[B, K, *]``, interest_mask ``[B, K]`` bool (at least one active per row).
        - Output: ``(values, indices)``, each ``[B, *]``.
    """
    values, winners = interest_winners(scores, interest_mask)
    first = torch.zeros_like(values)  # [B *]
    for k in reversed(range(scores.shape[1])):  # a lower interest reaching the max overwrites a higher one
        first.addcmul_(winners.select(1, k), k - first)
    return BestInterest(values, first.long())


def max_over_interests(interests, interest_mask, item_vectors, chunk_size=None):
    """Score every item by its best interest: ``max_k e_i . v_u^k`` over active interests.

    Items are scored ``chunk_size`` at a time, so the ``[B, K, chunk]`` intermediate stays bounded.

    Shape:
        - interests ``[B, K, D]``, interest_mask ``[B, K]`` bool, item_vectors ``[N, D]``.
        - Output: ``[B, N]``.
    """
    chunk_size = chunk_size or item_vectors.shape[0]
    scores = []
    for start in range(0, item_vectors.shape[0], chunk_size):
        chunk = item_vectors[start : start + chunk_size]  # [n D]
        chunk_scores = torch.einsum("bkd,nd->bkn", interests, chunk)  # [B K n]
        scores.append(interest_max(chunk_scores, interest_mask, in_place=True))  # [B n]
    return torch.cat(scores, dim=1)


class ReLUTower(nn.Module):
    """The "concat & ReLU" layer(s) over each interest capsule and the user profile.

    ``hidden_sizes`` ReLU layers, then a linear projection back to ``output_size`` so interest
    vectors can take either sign when dotted with item vectors (as in DeepMatch's MIND).

    Shape:
        - Input: ``[*, input_size]``. Output: ``[*, output_size]``.
    """

    def __init__(self, input_size, hidden_sizes, output_size, dropout_prob=0.0):
        super().__init__()
        layers = []
        for hidden_size in hidden_sizes:
            layers += [nn.Linear(input_size, hidden_size), nn.ReLU(), nn.Dropout(dropout_prob)]
            input_size = hidden_size
        layers.append(nn.Linear(input_size, output_size))
        self.layers = nn.Sequential(*layers)

    def forward(self, inputs):
        return self.layers(inputs)

    def forward_rows(self, inputs, rows, total_rows):
        """:meth:`forward` of ``rows`` out of ``total_rows`` rows, computing only those.

        Dropout draws its mask for all ``total_rows`` rows, as ``forward`` over them would (ATen's
        CPU dropout: ``bernoulli_(1 - p)`` over the whole input, divided by ``1 - p``), and keeps
        the rows' part: the values, and the random stream after, are those of ``forward``.

        Shape:
            - inputs ``[P, input_size]``, rows ``[P]`` positions among ``total_rows``.
            - Output: ``[P, output_size]``.
        """
        for layer in self.layers:
            if isinstance(layer, nn.Dropout) and self.training and layer.p > 0:
                noise = inputs.new_empty(total_rows, inputs.shape[-1]).bernoulli_(1 - layer.p).div_(1 - layer.p)
                inputs = inputs * noise[rows]
            else:
                inputs = layer(inputs)
        return inputs
